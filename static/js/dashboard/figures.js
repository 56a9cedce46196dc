// Applies one spend.update (what a usage record changed on the bill) to the
// dashboard's figures, as the server would compute them on a reload: exact
// money in BigInt units of 1e-8 dollars, displays rounded half to even like
// Python's Decimal, breakdowns ordered by cost then label, the chart redrawn
// with sessions_app/chart.py's geometry.

export const TOKEN_KINDS = ['input_text', 'input_audio', 'input_image', 'cached', 'output_text', 'output_audio'];
const COUNTS = ['sessions', 'responses', ...TOKEN_KINDS];
const MONEY = ['cost_usd', 'transcription_cost_usd'];
const UNITS = 100000000n; // 1e8: the records keep 8 decimals

export function toUnits(text) {
  const negative = text.startsWith('-');
  const [whole, fraction = ''] = (negative ? text.slice(1) : text).split('.');
  const units = BigInt(whole || '0') * UNITS + BigInt((fraction + '00000000').slice(0, 8));
  return negative ? -units : units;
}

// `unitPlaces`: the decimals the units stand for (8: units of 1e-8 dollars).
export function fromUnits(units, places = 8, unitPlaces = 8) {
  const negative = units < 0n;
  let value = negative ? -units : units;
  const drop = 10n ** BigInt(unitPlaces - places);
  if (drop > 1n) {
    // Half to even, as Python's format of a Decimal does.
    const quotient = value / drop;
    const remainder = value % drop;
    const twice = remainder * 2n;
    value = quotient + (twice > drop || (twice === drop && quotient % 2n === 1n) ? 1n : 0n);
  }
  const scale = 10n ** BigInt(places);
  const whole = value / scale;
  const fraction = places ? `.${(value % scale).toString().padStart(places, '0')}` : '';
  return `${negative && value !== 0n ? '-' : ''}${whole}${fraction}`;
}

function emptyFigure() {
  const figure = { cost_usd: '0.00000000', cost_display: '0.0000', transcription_cost_usd: '0.00000000' };
  for (const name of COUNTS) figure[name] = 0;
  return figure;
}

function addTo(figure, change) {
  for (const name of COUNTS) figure[name] += change[name] || 0;
  for (const name of MONEY) figure[name] = fromUnits(toUnits(figure[name]) + toUnits(change[name] || '0'));
  figure.cost_display = fromUnits(toUnits(figure.cost_usd), 4);
}

function monthOf(day) {
  return `${day.slice(0, 7)}-01`;
}

function matches(data, update) {
  const f = data.filters || {};
  return (!f.team || f.team === update.team_id) && (!f.user || f.user === update.user)
    && (!f.model || f.model === update.model);
}

function href(data, param, value) {
  if (!value) return '';
  const params = new URLSearchParams(data.params);
  params.set(param, value);
  return `?${params.toString()}`;
}

function addToBreakdown(data, name, param, key, label, change) {
  const rows = data[name];
  let row = rows.find((r) => r.key === key);
  if (!row) {
    row = { ...emptyFigure(), key, label, href: href(data, param, key) };
    rows.push(row);
  }
  addTo(row, change);
  rows.sort((a, b) => {
    const byCost = toUnits(b.cost_usd) - toUnits(a.cost_usd);
    if (byCost !== 0n) return byCost > 0n ? 1 : -1;
    return a.label < b.label ? -1 : (a.label > b.label ? 1 : 0);
  });
}

// `counted`: +1 when the conversation now counts in the range, -1 when it no longer does.
function updateSessions(data, update, counted) {
  const row = update.session_row;
  const index = data.sessions.findIndex((s) => s.id === row.id);
  if (index >= 0 && counted < 0) {
    data.sessions.splice(index, 1);
  } else if (index >= 0) {
    data.sessions[index] = row;
  } else if (counted > 0 && data.sessions_page === 1) {
    data.sessions.unshift(row); // newest first: it was first billed just now
    data.sessions.length = Math.min(data.sessions.length, data.sessions_per_page);
  }
  data.sessions_pages = Math.max(1, Math.ceil(data.range.sessions / data.sessions_per_page));
  data.sessions_shown = data.sessions.length;
}

// Applies the update to `data` in place; returns whether anything shown changed.
export function applyUpdate(data, update) {
  if (!matches(data, update) || !Array.isArray(update.changes)) return false;
  let counted = 0;
  for (const change of update.changes) {
    const day = change.day;
    if (day > data.today_date) {
      // A new UTC day (and maybe month) began since the figures were read.
      data.today_date = day;
      data.today = emptyFigure();
      if (monthOf(day) !== data.month_start) {
        data.month_start = monthOf(day);
        data.month = emptyFigure();
      }
    }
    if (day === data.today_date) addTo(data.today, change);
    if (day >= data.month_start && day <= data.today_date) addTo(data.month, change);
    if (day < data.start || day > data.end) continue;
    counted += change.sessions;
    addTo(data.range, change);
    addToBreakdown(data, 'by_user', 'user', update.user, update.user, change);
    addToBreakdown(data, 'by_team', 'team', update.team_id || '', update.team || '(none)', change);
    addToBreakdown(data, 'by_model', 'model', update.model, update.model, change);
    const dayRow = data.by_day.find((r) => r.key === day);
    if (dayRow) addTo(dayRow, change);
  }
  updateSessions(data, update, counted);
  data.chart = chart(data);
  return true;
}

// sessions_app/chart.py's bars, for the figures as they now stand.
const WIDTH = 720;
const HEIGHT = 220;
const LEFT = 70;
const RIGHT = 10;
const TOP = 14;
const BOTTOM = 30;

function round2(x) {
  return Math.round(x * 100) / 100;
}

export function chart(data) {
  const days = data.by_day;
  const costs = days.map((r) => toUnits(r.cost_usd));
  const peak = costs.reduce((a, b) => (b > a ? b : a), 0n);
  const plotWidth = WIDTH - LEFT - RIGHT;
  const plotHeight = HEIGHT - TOP - BOTTOM;
  const step = plotWidth / Math.max(days.length, 1);
  const bars = days.map((row, i) => {
    const height = peak ? (Number(costs[i]) / Number(peak)) * plotHeight : 0;
    return {
      x: round2(LEFT + i * step + step * 0.1),
      y: round2(TOP + plotHeight - height),
      width: round2(Math.max(step * 0.8, 1)),
      height: round2(height),
      label: `${row.label}: $${row.cost_display}`,
    };
  });
  const peakDisplay = fromUnits(peak, 4);
  const busiest = peak ? days[costs.indexOf(peak)].label : null;
  return {
    ...data.chart,
    peak_display: peakDisplay,
    description: `${busiest ? `Highest: $${peakDisplay} on ${busiest}.` : 'No spend in this range.'}`
      + ' The table “By day” has every value.',
    bars,
  };
}
