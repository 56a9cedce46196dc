// Redraws the dashboard's figures from its JSON mode. The markup mirrors
// templates/dashboard/: same cells, same data attributes. Every string from a
// user or a model goes in as text, never as HTML.

import { TOKEN_KINDS } from './figures.js';

const SVG = 'http://www.w3.org/2000/svg';

// 12345 -> "12,345", "1234.5678" -> "1,234.5678": as the templates' `grouped` filter writes them.
export function grouped(value) {
  const text = String(value);
  const negative = text.startsWith('-');
  const [whole, fraction] = (negative ? text.slice(1) : text).split('.');
  const withCommas = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return `${negative ? '\u2212' : ''}${withCommas}${fraction === undefined ? '' : `.${fraction}`}`;
}

// The pages' one date-and-time format, as the templates' `when` filter writes it.
export function when(date) {
  return `${date.toISOString().slice(0, 16).replace('T', ' ')} UTC`;
}

// A row with anything on it; the by-day table leaves quiet days out (the chart keeps them).
function hasSpend(figure) {
  return figure.sessions > 0 || TOKEN_KINDS.some((kind) => figure[kind] > 0) || Number(figure.cost_usd) !== 0;
}

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

// data-input-text="…" and friends, as the server writes them.
function setData(node, figure) {
  for (const kind of TOKEN_KINDS) node.setAttribute(`data-${kind.replace('_', '-')}`, String(figure[kind]));
  node.setAttribute('data-cost-usd', figure.cost_usd);
}

function figureCells(row, figure) {
  for (const kind of TOKEN_KINDS) row.append(el('td', grouped(figure[kind]), { class: 'num' }));
  row.append(el('td', grouped(figure.cost_display), { class: 'num', title: figure.cost_usd }));
}

function emptyRow(columns, text) {
  const row = el('tr', undefined, { class: 'empty' });
  row.append(el('td', text, { colspan: String(columns) }));
  return row;
}

function renderTotals(data) {
  for (const name of ['today', 'month', 'range']) {
    const node = document.querySelector(`[data-figure="${name}"]`);
    if (!node) continue;
    setData(node, data[name]);
    node.setAttribute('data-sessions', String(data[name].sessions));
    node.title = data[name].cost_usd;
    node.textContent = `$${grouped(data[name].cost_display)}`;
  }
  const today = document.querySelector('[data-figure-label="today"]');
  if (today) today.textContent = `Today (${data.today_date})`;
  const sessions = document.querySelector('[data-figure-sessions="range"]');
  if (sessions) sessions.textContent = grouped(data.range.sessions);
}

function breakdownRow(figure, header) {
  const row = el('tr', undefined, { 'data-key': figure.key ?? 'total', 'data-sessions': String(figure.sessions) });
  setData(row, figure);
  const th = el('th', undefined, { scope: 'row' });
  if (figure.href) th.append(el('a', figure.label, { href: figure.href }));
  else th.textContent = header ?? figure.label;
  row.append(th, el('td', grouped(figure.sessions), { class: 'num' }));
  figureCells(row, figure);
  return row;
}

function renderBreakdown(table, rows, total) {
  const body = table.tBodies[0];
  const byDay = table.dataset.breakdown === 'day';
  const shown = byDay ? rows.filter(hasSpend) : rows;
  const empty = byDay ? 'No day in this range has any spend.' : 'No spend in this range.';
  body.replaceChildren(...(shown.length ? shown.map((r) => breakdownRow(r)) : [emptyRow(9, empty)]));
  table.tFoot.replaceChildren(breakdownRow({ ...total, key: 'total', href: '' }, 'Total'));
}

function verifiedText(s) {
  if (!s.verified) return document.createTextNode('No');
  const detail = `verified $${s.verified_cost_display}, reported $${s.reported_session_cost_display}`;
  const cell = document.createDocumentFragment();
  if (s.mismatch) cell.append(el('strong', 'Mismatch'), `: ${detail}`);
  else cell.append(`Yes: ${detail}`);
  return cell;
}

function sessionRow(s) {
  const row = el('tr', undefined, {
    'data-session': s.id,
    'data-verified': String(s.verified),
    'data-mismatch': String(s.mismatch),
    'data-verified-cost-usd': s.verified_cost_usd ?? '',
    'data-reported-session-cost-usd': s.reported_session_cost_usd,
    'data-cost-usd': s.cost_usd,
    'data-input-tokens': String(s.input_tokens),
    'data-cached': String(s.cached),
    'data-output-tokens': String(s.output_tokens),
    'data-responses': String(s.responses),
  });
  if (s.mismatch) row.className = 'mismatch';
  const started = el('td');
  started.append(el('a', s.started_display, { href: s.url }));
  row.append(started, el('td', s.user), el('td', s.team), el('td', s.model), el('td', s.duration_display));
  for (const name of ['responses', 'input_tokens', 'cached', 'output_tokens']) {
    row.append(el('td', grouped(s[name]), { class: 'num' }));
  }
  row.append(el('td', grouped(s.cost_display), { class: 'num', title: s.cost_usd }));
  const verified = el('td', undefined, { class: 'wrap' });
  verified.append(verifiedText(s));
  row.append(el('td', s.documents.join(', '), { class: 'wrap' }), verified);
  return row;
}

function renderSessions(data) {
  const table = document.getElementById('sessions-table');
  const rows = data.sessions.map(sessionRow);
  table.tBodies[0].replaceChildren(...(rows.length ? rows : [emptyRow(12, 'No sessions in this range.')]));
  const total = data.range.sessions;
  let text = `${grouped(total)} session${total === 1 ? '' : 's'} first billed in the range`;
  if (data.sessions_pages > 1) {
    text += `, page ${data.sessions_page} of ${data.sessions_pages}; the CSV has every one`;
  }
  document.getElementById('sessions-note').textContent = `${text}.`;
}

function renderChart(chart) {
  const svg = document.getElementById('spend-chart');
  svg.querySelector('title').textContent = chart.title;
  svg.querySelector('desc').textContent = chart.description;
  svg.querySelector('[data-chart="peak"]').textContent = `$${chart.peak_display}`;
  svg.querySelector('[data-chart="first"]').textContent = chart.first_day;
  svg.querySelector('[data-chart="last"]').textContent = chart.last_day;
  const bars = chart.bars.map((bar) => {
    const rect = document.createElementNS(SVG, 'rect');
    for (const name of ['x', 'y', 'width', 'height']) rect.setAttribute(name, String(bar[name]));
    const title = document.createElementNS(SVG, 'title');
    title.textContent = bar.label;
    rect.append(title);
    return rect;
  });
  svg.querySelector('[data-chart="bars"]').replaceChildren(...bars);
}

export function renderFigures(data) {
  renderTotals(data);
  for (const table of document.querySelectorAll('table[data-breakdown]')) {
    renderBreakdown(table, data[`by_${table.dataset.breakdown}`], data.range);
  }
  renderSessions(data);
  renderChart(data.chart);
}
