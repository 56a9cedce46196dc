from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_POST

from teams_app.models import Membership
from voiceproject.views import json_error

from . import extract, search
from .forms import UploadForm
from .models import Document
from .tokens import count_tokens
from .uploads import SizeLimitedUploadHandler

# The API answers a search with the best PAGE_RESULTS (the voice page's picker shows them as you
# type); `?limit=` asks for up to MAX_RESULTS.
PAGE_RESULTS, MAX_RESULTS = 20, 50
# Multipart framing around the file: a Content-Length this far past the limit
# can be refused before a single byte of the body is read.
FORM_OVERHEAD_BYTES = 64 * 1024


def _get_document_for_user(user, document_id):
    """A document the user may see; anything else is 404, existing or not."""
    try:
        return Document.objects.visible_to(user).select_related("owner", "team").get(pk=document_id)
    except Document.DoesNotExist:
        raise Http404 from None


def _found(user, query, limit):
    """(document, snippet runs) pairs: most relevant first for a query, else newest first."""
    if query:
        return [(hit.document, search.marked(hit.snippet)) for hit in search.search_documents(user, query, limit)]
    documents = Document.objects.visible_to(user).listed()[:limit]
    return [(document, []) for document in documents]


# The library lists its documents newest first, a page at a time; a search shows its best matches at most.
LIBRARY_PAGE = 50
SEARCH_RESULTS = 200


def _library(request, form=None, error=None, duplicate=None, status=200):
    query = search.clean(request.GET.get("q", ""))[:200].strip()
    membership = Membership.primary_for(request.user)
    page = None
    if query:
        results = _found(request.user, query, SEARCH_RESULTS)
    else:
        page = Paginator(Document.objects.visible_to(request.user).listed(), LIBRARY_PAGE).get_page(
            request.GET.get("page"))
        results = [(document, []) for document in page]
    context = {
        "results": results,
        "page": page,
        "search_cut": len(results) if query and len(results) == SEARCH_RESULTS else None,
        "query": query,
        "form": form or UploadForm(),
        "error": error,
        "duplicate": duplicate,
        "membership": membership,
        "can_upload": bool(membership and membership.can_write),
        "max_mb": extract.MAX_FILE_BYTES // (1024 * 1024),
        "max_bytes": extract.MAX_FILE_BYTES,
        "max_chars": extract.MAX_CHARS,
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
    membership = Membership.primary_for(request.user)
    if membership is None:
        return _library(request, error="You are not in a team, so there is no library to upload to.", status=403)
    if not membership.can_write:
        # A page opened before the person was made read-only: say so, on the library as it now is.
        error = (f"You are now a read-only member of {membership.team.name}: you can no longer upload documents. "
                 "Ask a team admin if you need one added.")
        return _library(request, error=error, status=403)
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
    with transaction.atomic():  # the document and its passages, or neither
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
            outline=result.outline or {},
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
        # The text, cut where each passage starts, so a source can link to its passage.
        "segments": document.segments(),
        "fits": fits_by_model(document.tokens),
    })


@login_required
@require_POST
def delete(request, document_id):
    document = _get_document_for_user(request.user, document_id)
    if not document.can_delete(request.user):
        raise PermissionDenied("Only the owner or a team admin can delete this document.")
    title = document.title
    document.delete()
    messages.success(request, f"Deleted “{title}” and its passages. Past conversations keep their transcripts.")
    return redirect("documents-library")


@require_GET
def api_documents(request):
    if not request.user.is_authenticated:
        return json_error("not_authenticated", "Sign in first.", 401)
    query = search.clean(request.GET.get("q", ""))[:200].strip()
    limit = request.GET.get("limit", str(PAGE_RESULTS))
    if not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= MAX_RESULTS):
        return json_error("invalid_request", f"limit must be a whole number from 1 to {MAX_RESULTS}.", 400)
    found = _found(request.user, query, int(limit))
    return JsonResponse({"documents": [{**d.as_json(), **_snippet_json(runs)} for d, runs in found]})


def _snippet_json(runs):
    """The snippet as plain text, and where in it the matched words are ([start, end] pairs)."""
    text, highlights = "", []
    for part, matched in runs:
        if matched:
            highlights.append([len(text), len(text) + len(part)])
        text += part
    return {"snippet": text, "highlights": highlights}


def fits_by_model(tokens):
    """For each model: does a document of this many tokens go into the conversation whole, or is it searched?"""
    from sessions_app.models import ModelPrice

    return [
        {"model": p.model, "budget": p.document_budget, "mode": "inline" if tokens <= p.document_budget else "search"}
        for p in ModelPrice.objects.filter(model__in=settings.REALTIME_MODELS).order_by("model")
    ]
