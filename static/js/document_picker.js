// Choosing library documents for a session: search as you type, keep an order.

import { grouped } from './dashboard/render.js';

const PAGE = 20;  // what /api/documents/ answers by default

export class DocumentPicker {
  constructor({ search, results, chosen, announce, onChange }) {
    this.search = search;
    this.announce = announce || (() => {});
    this.results = results;
    this.chosenList = chosen;
    this.onChange = onChange;
    this.chosen = [];  // [{id, title, tokens}], in the order chosen
    this.disabled = false;
    this.timer = null;
    this.seq = 0;
    search.addEventListener('input', () => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.find(search.value.trim()), 200);
    });
    // Enter searches at once; it never submits the form around the field (that once reloaded
    // the page with the pasted text in the URL).
    search.addEventListener('keydown', (event) => {
      if (event.key !== 'Enter') return;
      event.preventDefault();
      clearTimeout(this.timer);
      this.find(search.value.trim());
    });
    this.find('');
  }

  async find(query) {
    const seq = ++this.seq;
    let data = null;
    let trouble = '';
    try {
      const response = await fetch(`/api/documents/?q=${encodeURIComponent(query)}`, { credentials: 'same-origin' });
      if (response.status === 401 || response.redirected) trouble = 'You are signed out: reload the page to sign in.';
      else if (!response.ok) trouble = `The library could not be searched (HTTP ${response.status}). Try again.`;
      else data = await response.json();
    } catch {
      trouble = 'The library could not be searched (network). Try again.';
    }
    if (seq !== this.seq) return;  // a newer search has started
    if (!data) {
      this.results.replaceChildren(this.note(trouble));
      if (query) this.announce(trouble);
      return;
    }
    const rows = data.documents.map((doc) => this.resultRow(doc));
    const none = `No document matches “${query}”.`;
    if (!rows.length) {
      rows.push(this.note(query ? none : 'The library has no documents you can use yet. '
        + 'Add some on the Library page, or paste text below.'));
    } else if (!query && rows.length >= PAGE) {
      rows.push(this.note(`The ${PAGE} newest are listed; type to search the whole library.`));
    }
    this.results.replaceChildren(...rows);
    if (query) this.announce(data.documents.length ? `${data.documents.length} found.` : none);
  }

  // A line in the results that is no document.
  note(text) {
    const li = document.createElement('li');
    li.className = 'picker-note';
    li.textContent = text;
    return li;
  }

  resultRow(doc) {
    const li = document.createElement('li');
    const label = document.createElement('span');
    label.textContent = described(doc);
    if (doc.snippet) label.append(snippetElement(doc.snippet, doc.highlights || []));
    const add = document.createElement('button');
    add.type = 'button';
    add.className = 'small';
    add.textContent = 'Add';
    add.setAttribute('aria-label', `Add ${doc.title}`);
    const chosen = this.chosen.some((d) => d.id === doc.id);
    add.dataset.chosen = chosen ? 'yes' : 'no';
    add.disabled = chosen || this.disabled;
    add.addEventListener('click', () => {
      if (this.chosen.some((d) => d.id === doc.id)) return;
      this.chosen.push({ id: doc.id, title: doc.title, tokens: doc.tokens });
      add.dataset.chosen = 'yes';
      add.disabled = true;
      this.render();
      // The button just went disabled: back to the search, ready for the next document.
      this.search.focus();
      this.announce(`Added ${doc.title}; ${this.chosen.length} chosen.`);
    });
    li.append(label, add);
    return li;
  }

  render() {
    this.chosenList.replaceChildren(...this.chosen.map((doc, index) => {
      const li = document.createElement('li');
      li.dataset.documentId = doc.id;
      const label = document.createElement('span');
      label.textContent = described(doc);
      const remove = document.createElement('button');
      remove.type = 'button';
      remove.className = 'small';
      remove.textContent = 'Remove';
      remove.setAttribute('aria-label', `Remove ${doc.title}`);
      remove.addEventListener('click', () => {
        this.chosen.splice(index, 1);
        this.render();
        this.find(this.search.value.trim());
        const buttons = this.chosenList.querySelectorAll('button');
        (buttons[Math.min(index, buttons.length - 1)] || this.search).focus();
        this.announce(`Removed ${doc.title}; ${this.chosen.length} chosen.`);
      });
      li.append(label, remove);
      return li;
    }));
    this.onChange();
  }

  // Takes these documents off the chosen list (the server says they are gone); returns their titles.
  forget(ids) {
    const gone = this.chosen.filter((d) => ids.includes(d.id));
    if (gone.length) {
      this.chosen = this.chosen.filter((d) => !ids.includes(d.id));
      this.render();
      this.find(this.search.value.trim());
    }
    return gone.map((d) => d.title);
  }

  get ids() {
    return this.chosen.map((d) => d.id);
  }

  get tokens() {
    return this.chosen.reduce((sum, d) => sum + d.tokens, 0);
  }

  // Which chosen documents go into the conversation whole and which are searched: the server's
  // rule (in the order chosen, whole while the budget lasts; all searched when asked).
  placement(room, searchOnly) {
    return this.chosen.map((doc) => {
      const inline = !searchOnly && doc.tokens <= room;
      if (inline) room -= doc.tokens;
      return { ...doc, mode: inline ? 'inline' : 'search' };
    });
  }

  setDisabled(disabled) {
    this.disabled = disabled;
    this.search.disabled = disabled;
    for (const button of this.results.querySelectorAll('button')) button.disabled = disabled || button.dataset.chosen === 'yes';
    for (const button of this.chosenList.querySelectorAll('button')) button.disabled = disabled;
  }
}

// A document as the picker lists it: its title and size.
function described(doc) {
  return `${doc.title} (${grouped(doc.tokens)} tokens)`;
}

// The matched words of a search result, marked, everything inserted as text.
export function snippetElement(snippet, highlights) {
  const p = document.createElement('span');
  p.className = 'snippet';
  let at = 0;
  for (const [start, end] of highlights) {
    p.append(snippet.slice(at, start));
    const mark = document.createElement('mark');
    mark.textContent = snippet.slice(start, end);
    p.append(mark);
    at = end;
  }
  p.append(snippet.slice(at));
  return p;
}
