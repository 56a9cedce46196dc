from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_POST

from teams_app.models import Membership
from voiceproject.views import json_error

from . import extract
from .forms import UploadForm
from .models import Document
from .tokens import count_tokens
from .uploads import SizeLimitedUploadHandler

MAX_RESULTS = 50
# Multipart framing around the file: a Content-Length this far past the limit
# can be refused before a single byte of the body is read.
FORM_OVERHEAD_BYTES = 64 * 1024


def _get_document_for_user(user, document_id):
    """A document the user may see; anything else is 404, existing or not."""
    try:
        return Document.objects.visible_to(user).select_related("owner", "team").get(pk=document_id)
    except Document.DoesNotExist:
        raise Http404 from None


def _writable_membership(user):
    membership = Membership.primary_for(user)
    if membership is None or not membership.can_write:
        raise PermissionDenied("Read-only members cannot upload documents.")
    return membership


def _library(request, form=None, error=None, duplicate=None, status=200):
    query = request.GET.get("q", "").strip()[:200]
    documents = Document.objects.visible_to(request.user).select_related("owner", "team").defer("text")
    if query:
        documents = documents.search(query)
    membership = Membership.primary_for(request.user)
    context = {
        "documents": documents[:200],
        "query": query,
        "form": form or UploadForm(),
        "error": error,
        "duplicate": duplicate,
        "can_upload": bool(membership and membership.can_write),
        "max_mb": extract.MAX_FILE_BYTES // (1024 * 1024),
    }
    return render(request, "documents/library.html", context, status=status)


@login_required
@require_GET
def library(request):
    return _library(request)


@login_required
@csrf_exempt  # checked below, once the upload handlers are in place
@require_POST
def upload(request):
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > extract.MAX_FILE_BYTES + FORM_OVERHEAD_BYTES:
        return _refuse_too_large(request)
    request.upload_handlers = [SizeLimitedUploadHandler(request)]
    return _upload(request)


@csrf_protect
def _upload(request):
    membership = _writable_membership(request.user)
    form = UploadForm(request.POST, request.FILES)
    if getattr(request, "upload_too_large", False):
        return _refuse_too_large(request)
    if not form.is_valid():
        return _library(request, form=form, status=400)
    upload = form.cleaned_data["file"]
    try:
        result = extract.extract_text(upload.read(), upload.name)
    except extract.ExtractionError as exc:
        return _library(request, form=form, error=exc.message, status=400)
    finally:
        upload.close()  # the temporary file goes with it: nothing is kept but the record

    sha = Document.hash_text(result.text)
    visible = Document.objects.visible_to(request.user).filter(team=membership.team, sha256=sha).first()
    if visible:
        return _library(request, form=UploadForm(), duplicate=visible, status=409)
    with transaction.atomic():
        document = Document.objects.create(
            team=membership.team,
            owner=request.user,
            title=form.cleaned_data["title"] or upload.name[:200],
            filename=upload.name[:255],
            kind=result.kind,
            visibility=form.cleaned_data["visibility"],
            text=result.text,
            sha256=sha,
            tokens=count_tokens(result.text),
            size_bytes=upload.size,
            pages=result.pages,
            encoding=result.encoding or "",
        )
    return redirect("documents-detail", document_id=document.pk)


def _refuse_too_large(request):
    message = f"The file is larger than {extract.MAX_FILE_BYTES // (1024 * 1024)} MB. Upload a smaller file."
    return _library(request, error=message, status=413)


@login_required
@require_GET
def detail(request, document_id):
    document = _get_document_for_user(request.user, document_id)
    return render(request, "documents/detail.html", {
        "document": document,
        "can_delete": document.can_delete(request.user),
    })


@login_required
@require_POST
def delete(request, document_id):
    document = _get_document_for_user(request.user, document_id)
    if not document.can_delete(request.user):
        raise PermissionDenied("Only the owner or a team admin can delete this document.")
    document.delete()
    return redirect("documents-library")


@require_GET
def api_documents(request):
    if not request.user.is_authenticated:
        return json_error("not_authenticated", "Sign in first.", 401)
    query = request.GET.get("q", "").strip()[:200]
    # Listings never need the text itself, which is most of each row.
    documents = Document.objects.visible_to(request.user).select_related("owner", "team").defer("text")
    if query:
        documents = documents.search(query)
    return JsonResponse({"documents": [d.as_json() for d in documents[:MAX_RESULTS]]})
