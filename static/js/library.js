// The library's pages: uploads that show their progress and keep the form on an error, and deletes
// that ask first. Without this script the forms still post as plain HTML forms.

const form = document.getElementById('upload-form');

function say(container, text, { alert = false, link = null } = {}) {
  const p = document.createElement('p');
  p.className = 'error';
  if (alert) p.setAttribute('role', 'alert');
  p.textContent = text;
  if (link) p.append(' ', link);
  container.replaceChildren(p);
}

function setUp(uploadForm) {
  const button = document.getElementById('upload-button');
  const progress = document.getElementById('upload-progress');
  const status = document.getElementById('upload-status');
  const messages = document.querySelector('[data-upload-messages]');
  const file = uploadForm.elements.file;
  const maxBytes = Number(uploadForm.dataset.maxBytes);

  function busy(on) {
    button.disabled = on;
    button.textContent = on ? 'Uploading…' : 'Upload';
    uploadForm.setAttribute('aria-busy', String(on));
    progress.hidden = !on;
    if (on) progress.removeAttribute('value');
  }

  function failed(text) {
    busy(false);
    status.textContent = '';
    say(messages, text, { alert: true });
  }

  // The server's page for a refused upload: its messages replace ours, the form stays as typed.
  function showRefusal(html) {
    const page = new DOMParser().parseFromString(html, 'text/html');
    const found = page.querySelector('[data-upload-messages]');
    busy(false);
    status.textContent = '';
    if (found && found.children.length) {
      messages.replaceChildren(...[...found.children].map((node) => document.importNode(node, true)));
    } else {
      say(messages, 'The upload was refused. Try again.', { alert: true });
    }
    file.focus();
  }

  uploadForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!chosen) {
      say(messages, 'Choose a file to upload.', { alert: true });
      file.focus();
      return;
    }
    if (chosen.size > maxBytes) {
      say(messages, `“${chosen.name}” is larger than ${uploadForm.dataset.maxMb} MB. Upload a smaller file.`,
        { alert: true });
      file.focus();
      return;
    }
    messages.replaceChildren();
    busy(true);
    status.textContent = `Uploading “${chosen.name}”…`;
    const request = new XMLHttpRequest();
    request.open('POST', uploadForm.action);
    request.upload.addEventListener('progress', (e) => {
      if (!e.lengthComputable) return;
      const percent = Math.floor((e.loaded / e.total) * 100);
      progress.value = percent;
      status.textContent = `Uploading “${chosen.name}”: ${percent}%`;
    });
    request.upload.addEventListener('load', () => {
      progress.removeAttribute('value');
      status.textContent = `Uploaded; reading “${chosen.name}” and counting its tokens…`;
    });
    const uploadPath = new URL(uploadForm.action, location.href).pathname;
    let opened = false;
    // Stored: the server redirects to the document's page. Go there as soon as that is known,
    // without waiting for this request to download the page too.
    request.addEventListener('readystatechange', () => {
      if (request.readyState !== XMLHttpRequest.HEADERS_RECEIVED || !request.responseURL) return;
      const landed = new URL(request.responseURL);
      if (request.status === 200 && landed.pathname !== uploadPath) {
        opened = true;
        status.textContent = 'Done: opening the document…';
        request.abort();
        location.assign(landed.href);
      }
    });
    request.addEventListener('load', () => {
      if (!opened) showRefusal(request.responseText);
    });
    request.addEventListener('error', () => opened || failed(
      'The upload was cut off before the server answered. Check the connection and the file size, and try again.'));
    request.send(new FormData(uploadForm));
  });
}

if (form) setUp(form);

// Deleting asks first; the page it lands on says what happened.
for (const confirmForm of document.querySelectorAll('form[data-confirm]')) {
  confirmForm.addEventListener('submit', (event) => {
    if (!window.confirm(confirmForm.dataset.confirm)) event.preventDefault();
  });
}
