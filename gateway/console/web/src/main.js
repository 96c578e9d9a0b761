// The operator console: login (with TOTP enrollment at the first login), the fleet (list and
// map, live over Server-Sent Events), a car's page (with its command timeline), the users
// page, and the admin actions (each confirmed first; the server checks the role). Everything it needs is in this bundle:
// Leaflet draws the map over Natural Earth's countries (world-atlas), no tile server.
import L from 'leaflet';
import 'leaflet/dist/leaflet.css';
import { feature } from 'topojson-client';
import countries110m from 'world-atlas/countries-110m.json';
import './style.css';

const api = '/console/api';
// The fleet list draws only the rows in view (and a few around them): every car can be
// scrolled to, and 20,000 cars cost 20,000 rows of data, not of DOM. Rows are styled 28 px
// high; the height drawn is measured (state.rowHeight) so the spacers stay exact.
const overscanRows = 8;

const state = {
  session: null, // {operator, role, stage, csrf}
  cars: new Map(), // vin -> Car
  incoming: null, // the parts of a fleet event received so far (Map), until the last
  sorted: null, // state.cars in VIN order; null when a car came or went
  shown: [], // the fleet list's matching cars, in VIN order
  rowHeight: 28,
  fleetMarked: false,
  blobs: [], // object URLs of reissued credentials: revoked when the page changes
  events: null,
  eventsOK: false,
  view: null, // {name, vin?}
  map: null,
  markers: new Map(), // vin -> {m, lat, lon, color}: the marker and what it shows
  carTimer: null,
};

const $ = (sel) => document.querySelector(sel);
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(c ?? ''));
  return e;
}

async function call(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && state.session) headers['X-CSRF-Token'] = state.session.csrf;
  const res = await fetch(api + path, { method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  if (res.status !== 204) {
    try { data = await res.json(); } catch { data = null; }
  }
  if (!res.ok) {
    const err = new Error((data && data.message) || res.statusText);
    err.status = res.status;
    err.reason = data && data.error;
    throw err;
  }
  return data;
}

// Routing: #fleet, #car/VIN; the login page is shown whenever there is no session.
function route() {
  const h = location.hash.replace(/^#/, '');
  if (!state.session || state.session.stage !== 'full') return showLogin();
  if (h.startsWith('car/')) return showCar(decodeURIComponent(h.slice(4)));
  if (h === 'users') return showUsers();
  return showFleet();
}

function header() {
  const s = state.session;
  $('#who').textContent = s && s.stage === 'full' ? `${s.operator} (${s.role})` : '';
  $('#logout').hidden = !(s && s.stage === 'full');
  $('#nav').hidden = !(s && s.stage === 'full');
}

function setMain(...nodes) {
  if (state.carTimer) { clearInterval(state.carTimer); state.carTimer = null; }
  state.shown = [];
  for (const u of state.blobs) URL.revokeObjectURL(u);
  state.blobs = [];
  state.map = null;
  state.markers.clear();
  $('#app').replaceChildren(...nodes);
}

// --- login and enrollment ---

function showLogin() {
  state.view = { name: 'login' };
  stopEvents();
  header();
  const msg = el('p', { class: 'error', id: 'login-error', role: 'alert' });
  const form = el('form', { class: 'login card', id: 'login-form' },
    el('h2', {}, 'Operator login'),
    el('label', {}, 'Operator', el('input', { id: 'operator', name: 'operator', autocomplete: 'username', required: '' })),
    el('label', {}, 'Password', el('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: '' })),
    el('label', {}, 'Code from your authenticator app (not needed at your first login)',
      el('input', { id: 'code', name: 'code', inputmode: 'numeric', autocomplete: 'one-time-code' })),
    el('button', { id: 'login-submit', type: 'submit' }, 'Log in'),
    msg);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    msg.textContent = '';
    try {
      const s = await call('POST', '/login', { operator: $('#operator').value.trim(), password: $('#password').value, code: $('#code').value.trim() });
      state.session = s;
      if (s.enroll) return showEnroll(s.enroll);
      onLoggedIn();
    } catch (e) {
      msg.textContent = `${e.reason || e.status}: ${e.message}`;
    }
  });
  setMain(form);
}

function showEnroll(en) {
  state.view = { name: 'enroll' };
  const msg = el('p', { class: 'error', id: 'enroll-error', role: 'alert' });
  const form = el('form', { class: 'login card', id: 'enroll-form' },
    el('h2', {}, 'Set up your authenticator'),
    el('p', {}, 'Scan this code with an authenticator app, then enter the code it shows.'),
    el('img', { id: 'enroll-qr', src: en.qr_png, width: '256', height: '256', alt: 'TOTP QR code' }),
    el('p', {}, 'Or type in the secret: ', el('span', { class: 'secret', id: 'enroll-secret' }, en.secret)),
    el('label', {}, 'Code', el('input', { id: 'enroll-code', inputmode: 'numeric', autocomplete: 'one-time-code', required: '' })),
    el('button', { id: 'enroll-submit', type: 'submit' }, 'Confirm'),
    msg);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    msg.textContent = '';
    try {
      const s = await call('POST', '/enroll', { code: $('#enroll-code').value.trim() });
      state.session = s;
      showRecovery(s.recovery_codes || []);
    } catch (e) {
      msg.textContent = `${e.reason || e.status}: ${e.message}`;
    }
  });
  setMain(form);
}

function showRecovery(codes) {
  state.view = { name: 'recovery' };
  header();
  setMain(el('div', { class: 'login card', id: 'recovery' },
    el('h2', {}, 'Recovery codes'),
    el('p', {}, 'Keep these somewhere safe: each one logs you in once without the authenticator. They are not shown again.'),
    el('ul', { class: 'codes' }, codes.map((c) => el('li', {}, c))),
    el('button', { id: 'recovery-done', onclick: () => onLoggedIn() }, 'Continue')));
}

function onLoggedIn() {
  header();
  startEvents();
  if (!location.hash || location.hash === '#login') location.hash = '#fleet';
  else route();
}

// --- live fleet ---

function startEvents() {
  if (state.events) return;
  const es = new EventSource(api + '/events');
  state.events = es;
  es.addEventListener('open', () => { state.eventsOK = true; state.incoming = null; setLive(true); renderAlerts([]); });
  es.addEventListener('alerts', (ev) => renderAlerts(JSON.parse(ev.data)));
  es.addEventListener('error', async () => {
    setLive(false);
    if (es.readyState === EventSource.CLOSED) {
      // The server refused the stream: the session may have ended.
      state.events = null;
      try {
        state.session = await call('GET', '/session');
        setTimeout(startEvents, 1000);
      } catch (e) {
        if (e.status === 401) { state.session = null; route(); } else setTimeout(startEvents, 2000);
      }
    }
  });
  // The whole fleet comes in parts; a first load lists each part as it comes (the map waits
  // for the last), a resync swaps the list once it is complete.
  es.addEventListener('fleet', (ev) => {
    const f = JSON.parse(ev.data);
    const first = state.incoming === null && state.cars.size === 0;
    if (state.incoming === null) state.incoming = new Map();
    for (const c of f.cars) state.incoming.set(c.vin, c);
    if (first) state.cars = state.incoming;
    state.sorted = null;
    if (f.more) {
      if (state.cars === state.incoming && state.view && state.view.name === 'fleet') renderFleetRows(false);
      if (first) performance.mark('console:fleet-first-part'); // the page-load measurement reads these
      return;
    }
    state.cars = state.incoming;
    state.incoming = null;
    refresh(null);
    if (first) performance.mark('console:fleet-first-part');
    if (!state.fleetMarked) { performance.mark('console:fleet-complete'); state.fleetMarked = true; }
  });
  es.addEventListener('cars', (ev) => {
    const changed = JSON.parse(ev.data);
    const timelines = [];
    for (const c of changed) {
      if (c.commands) timelines.push(c.vin); // new requests on the car's timeline
      else if (c.gone) { state.cars.delete(c.vin); state.sorted = null; } else {
        if (!state.cars.has(c.vin)) state.sorted = null;
        state.cars.set(c.vin, c);
      }
    }
    refresh([...new Set(changed.filter((c) => !c.commands).map((c) => c.vin))]);
    if (state.view && state.view.name === 'car' && timelines.includes(state.view.vin)) loadTimeline(state.view.vin);
  });
  es.addEventListener('ended', () => { stopEvents(); state.session = null; route(); });
}

function stopEvents() {
  if (state.events) state.events.close();
  state.events = null;
  renderAlerts([]);
}

// The alerts panel: the server sends the whole list whenever it changes.
function renderAlerts(list) {
  const box = $('#alerts');
  if (!box) return;
  box.hidden = list.length === 0;
  const since = (ms) => (ms ? ` (${new Date(ms).toISOString().slice(11, 19)} UTC)` : '');
  box.replaceChildren(el('strong', {}, `Alerts (${list.length})`),
    el('ul', { id: 'alerts-list' }, list.map((a) => el('li', { class: `alert-${a.kind}`, 'data-kind': a.kind },
      a.subject && a.subject.length === 17 ? el('a', { href: `#car/${a.subject}` }, a.message) : a.message, since(a.since)))));
}

function setLive(on) {
  const s = $('#live');
  if (s) { s.textContent = on ? 'live' : 'reconnecting…'; s.className = on ? 'ok' : 'waiting'; }
}

function refresh(vins) {
  if (!state.view) return;
  if (state.view.name === 'fleet') renderFleetRows(vins || true);
  if (state.view.name === 'car' && (!vins || vins.includes(state.view.vin))) loadCar(state.view.vin);
  if (state.view.name === 'car' && !vins) loadTimeline(state.view.vin);
  if (state.view.name === 'users' && !vins) loadUsers();
}

// --- fleet page ---

function showFleet() {
  state.view = { name: 'fleet' };
  header();
  const relist = () => { $('#fleet-scroll').scrollTop = 0; renderFleetRows(); };
  const search = el('input', { id: 'search', type: 'search', placeholder: 'Search VIN', oninput: relist });
  const filter = el('select', { id: 'filter', onchange: relist },
    el('option', { value: '' }, 'All cars'), el('option', { value: 'online' }, 'Online'), el('option', { value: 'offline' }, 'Offline'),
    el('option', { value: 'unlocked' }, 'Unlocked'), el('option', { value: 'waiting' }, 'Whitelist not on the car'));
  const adminUser = el('input', { id: 'admin-user', placeholder: 'user name' });
  const adminResult = el('span', { id: 'admin-result' });
  const admin = el('div', { class: 'card', id: 'admin' },
    el('strong', {}, 'Clear a user\'s lockout '), adminUser,
    el('button', { id: 'admin-unlock', onclick: async () => {
      adminResult.textContent = '';
      if (!confirm(`Clear the lockouts of ${adminUser.value}?`)) return;
      try {
        await call('POST', `/users/${encodeURIComponent(adminUser.value.trim())}/unlock`, {});
        adminResult.textContent = 'done';
        adminResult.className = 'ok';
      } catch (e) {
        adminResult.textContent = `${e.status} ${e.reason}: ${e.message}`;
        adminResult.className = 'error';
      }
    } }, 'Unlock'), ' ', adminResult);
  const table = el('table', { id: 'fleet-table' },
    el('thead', {}, el('tr', {}, ['VIN', 'State', 'Lock', 'Battery', 'Speed', 'Last seen', 'Whitelist'].map((h) => el('th', {}, h)))),
    el('tbody', { id: 'fleet-rows' }));
  let frame = 0;
  const scroller = el('div', { id: 'fleet-scroll', onscroll: () => {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; renderWindow(); });
  } }, table);
  setMain(
    el('div', { class: 'toolbar' }, search, filter, el('span', { id: 'count', class: 'muted' }), el('span', { id: 'live', class: 'waiting' }, 'connecting…')),
    el('div', { class: 'fleet' }, el('div', { class: 'card' }, scroller), el('div', { class: 'card' }, el('div', { id: 'map' }))),
    admin);
  setLive(state.events && state.events.readyState === EventSource.OPEN);
  initMap();
  renderFleetRows();
}

function matches(c, q, f) {
  if (q && !c.vin.includes(q)) return false;
  switch (f) {
    case 'online': return c.online;
    case 'offline': return !c.online;
    case 'unlocked': return c.locked === false;
    case 'waiting': return c.wl_version > c.wl_acked;
  }
  return true;
}

function ago(ms, now) {
  if (!ms) return 'never';
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function lockText(c) { return c.locked === true ? 'locked' : c.locked === false ? 'unlocked' : '–'; }

function wlText(c, now) {
  if (!c.wl_version) return 'none';
  if (c.wl_version <= c.wl_acked) return `v${c.wl_version} on the car`;
  return `v${c.wl_version} issued, car has v${c.wl_acked}` + (c.wl_waiting_from ? `, waiting ${ago(c.wl_waiting_from, now).replace(' ago', '')}` : '');
}

// renderFleetRows filters the fleet again (after a change, a search or a filter) and draws
// the rows in view, and the map's markers: all of them (markers true), none (false), or only
// those of the cars that changed (markers: their VINs; the others stay as they are drawn).
function renderFleetRows(markers = true) {
  if (!$('#fleet-rows')) return;
  const q = ($('#search').value || '').trim().toUpperCase();
  const f = $('#filter').value;
  if (!state.sorted) state.sorted = [...state.cars.values()].sort((a, b) => (a.vin < b.vin ? -1 : 1));
  else state.sorted = state.sorted.map((c) => state.cars.get(c.vin)); // same cars, newer values
  state.shown = state.sorted.filter((c) => matches(c, q, f));
  renderWindow();
  if (Array.isArray(markers) && state.mapFitted) {
    for (const vin of markers) {
      const c = state.cars.get(vin);
      placeMarker(vin, c && matches(c, q, f) ? c : null);
    }
  } else if (markers) renderMarkers(state.shown);
}

function fleetRow(c, now) {
  return el('tr', { id: `car-${c.vin}`, 'data-vin': c.vin },
    el('td', {}, el('a', { href: `#car/${c.vin}` }, c.vin)),
    el('td', { class: c.online ? 'online' : 'offline', 'data-field': 'state' }, c.online ? 'online' : 'offline'),
    el('td', { 'data-field': 'lock' }, lockText(c)),
    el('td', { class: 'num' }, c.battery == null ? '–' : `${Math.round(c.battery)} %`),
    el('td', { class: 'num' }, c.speed == null ? '–' : `${Math.round(c.speed)} km/h`),
    el('td', {}, ago(c.last_seen, now)),
    el('td', { class: c.wl_version > c.wl_acked ? 'waiting' : '', 'data-field': 'whitelist' }, wlText(c, now)));
}

// spacer is a row standing for n rows not drawn (the scroll bar stays true to the list).
function spacer(n, id) {
  const td = el('td', { colspan: '7' });
  td.style.height = `${n * state.rowHeight}px`;
  return el('tr', { class: 'spacer', id }, td);
}

// renderWindow draws the matching cars in view of the list's scroll box, and spacers for
// the rest.
function renderWindow() {
  const body = $('#fleet-rows');
  const box = $('#fleet-scroll');
  if (!body || !box) return;
  const shown = state.shown;
  const rowHeight = state.rowHeight;
  const top = Math.floor(box.scrollTop / rowHeight);
  const inView = Math.ceil(box.clientHeight / rowHeight);
  const first = Math.max(0, Math.min(top, shown.length - inView) - overscanRows);
  const last = Math.min(shown.length, first + inView + 2 * overscanRows);
  const now = Date.now();
  body.replaceChildren(spacer(first, 'fleet-above'), ...shown.slice(first, last).map((c) => fleetRow(c, now)),
    spacer(shown.length - last, 'fleet-below'));
  const drawn = body.children[1] && body.children[1].id !== 'fleet-below' ? body.children[1].getBoundingClientRect().height : 0;
  if (drawn > 0 && Math.abs(drawn - rowHeight) > 0.01) {
    state.rowHeight = drawn;
    renderWindow();
    return;
  }
  const from = Math.min(shown.length, top + 1);
  const to = Math.min(shown.length, top + inView - 1);
  $('#count').textContent = `${shown.length} of ${state.cars.size} cars` + (shown.length ? `, showing ${from}–${Math.max(from, to)}` : '');
}

function initMap() {
  const map = L.map('map', { preferCanvas: true, worldCopyJump: true, minZoom: 1, maxZoom: 12, attributionControl: true });
  map.attributionControl.setPrefix('Leaflet | Natural Earth');
  L.geoJSON(feature(countries110m, countries110m.objects.countries), {
    style: { color: '#8aa1b8', weight: 0.6, fillColor: '#eef2e6', fillOpacity: 1 },
    interactive: false,
  }).addTo(map);
  map.setView([48, 10], 3);
  state.map = map;
  state.mapFitted = false;
}

// renderMarkers draws the markers of cars and removes the others.
function renderMarkers(cars) {
  if (!state.map) return;
  const seen = new Set();
  const pts = [];
  for (const c of cars) {
    if (c.lat == null || c.lon == null) continue;
    seen.add(c.vin);
    pts.push([c.lat, c.lon]);
    placeMarker(c.vin, c);
  }
  for (const vin of state.markers.keys()) {
    if (!seen.has(vin)) placeMarker(vin, null);
  }
  if (!state.mapFitted && pts.length) {
    state.map.fitBounds(L.latLngBounds(pts).pad(0.3), { maxZoom: 10 });
    state.mapFitted = true;
  }
}

// placeMarker adds, moves, recolors or removes vin's marker to show c (null or no position: no
// marker); a marker whose position and color are unchanged is not touched, so the canvas
// redraws only what changed.
function placeMarker(vin, c) {
  const mk = state.markers.get(vin);
  if (!state.map || !c || c.lat == null || c.lon == null) {
    if (mk) { mk.m.remove(); state.markers.delete(vin); }
    return;
  }
  const color = c.online ? '#1b7f3b' : '#8a94a6';
  if (!mk) {
    const m = L.circleMarker([c.lat, c.lon], { radius: 5, weight: 1, color: '#1d2430', fillColor: color, fillOpacity: 0.9 });
    m.bindTooltip(vin);
    m.on('click', () => { location.hash = `#car/${vin}`; });
    m.addTo(state.map);
    state.markers.set(vin, { m, lat: c.lat, lon: c.lon, color });
    return;
  }
  if (mk.lat !== c.lat || mk.lon !== c.lon) {
    mk.m.setLatLng([c.lat, c.lon]);
    mk.lat = c.lat;
    mk.lon = c.lon;
  }
  if (mk.color !== color) {
    mk.m.setStyle({ fillColor: color });
    mk.color = color;
  }
}

// --- car page ---

function showCar(vin) {
  state.view = { name: 'car', vin, certDefaulted: false };
  header();
  // Checked once the car is loaded if its credentials have a device certificate.
  const withCert = el('input', { type: 'checkbox', id: 'reissue-cert' });
  setMain(el('p', {}, el('a', { href: '#fleet' }, '← Fleet')), el('div', { id: 'car' }, el('p', {}, 'Loading…')),
    el('div', { class: 'card' }, el('h3', {}, 'Commands'), el('div', { id: 'car-commands' }, el('p', { class: 'muted' }, 'Loading…'))),
    adminBox(`car-admin`, [
      ['Reissue credentials', 'reissue', () => `Issue ${vin} new credentials${withCert.checked ? ' and a new device certificate' : ''}? Its current token stops working.`,
        async () => reissued(vin, await call('POST', `/cars/${encodeURIComponent(vin)}/credentials`, { cert: withCert.checked }))],
    ], el('label', { class: 'muted' }, withCert, ' also issue a device certificate')));
  loadCar(vin);
  loadTimeline(vin);
}

// reissued shows new credentials once, with each secret as a file to download: the gateway
// keeps no copy.
function reissued(vin, cred) {
  const file = (name, text, type = 'application/x-pem-file') => {
    const href = URL.createObjectURL(new Blob([text], { type }));
    state.blobs.push(href);
    return el('a', { id: `download-${name.replace(/^.*-/, '').replace(/\..*$/, '')}`, download: name, class: 'download', href }, name);
  };
  const files = [file(`${vin}-credentials.json`, JSON.stringify(cred, null, 1), 'application/json')];
  if (cred.cert) files.push(file(`${vin}-cert.pem`, cred.cert), file(`${vin}-key.pem`, cred.cert_key), file(`${vin}-device-ca.pem`, cred.device_ca));
  return el('div', { id: 'reissued-box' },
    el('p', {}, 'Shown once: download them now and install them in the car. ',
      cred.cert ? el('span', { id: 'reissued-cert' }, 'With a device certificate. ') : ''),
    el('p', { class: 'downloads' }, files.flatMap((f) => [f, ' '])),
    el('pre', { id: 'reissued', class: 'secret' }, JSON.stringify(cred, null, 1)));
}

// oneAtATime runs load(key) once at a time per key: a call while the same key loads asks for
// one more load after it (the change it was called for may be newer than that answer); a call
// for another key (another car's page) runs at once, so a newer page never waits on, or is
// dropped for, an older one's load.
function oneAtATime(load) {
  let busy = null;
  let again = false;
  const run = async (key) => {
    if (busy === key) { again = true; return; }
    busy = key;
    again = false;
    try {
      await load(key);
    } finally {
      if (busy === key) {
        busy = null;
        if (again) run(key);
      }
    }
  };
  return run;
}

const loadCar = oneAtATime(async (vin) => {
  try {
    const p = await call('GET', `/cars/${encodeURIComponent(vin)}`);
    if (state.view.name === 'car' && state.view.vin === vin) renderCar(p);
  } catch (e) {
    if (e.status === 401) { state.session = null; route(); return; }
    const box = $('#car');
    if (box) box.replaceChildren(el('p', { class: 'error' }, `${e.status}: ${e.message}`));
  }
});

function renderCar(p) {
  const box = $('#car');
  if (!box) return;
  const cb = $('#reissue-cert');
  if (cb && !state.view.certDefaulted) { cb.checked = p.device_cert; state.view.certDefaulted = true; }
  const fmt = (v) => (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(5)) : String(v));
  const signals = Object.keys(p.signals).sort().map((k) => el('tr', {}, el('td', {}, k), el('td', { class: 'num' }, fmt(p.signals[k]))));
  const when = (ms) => (ms ? new Date(ms).toISOString().replace('T', ' ').replace(/\..*/, ' UTC') : '–');
  box.replaceChildren(
    el('div', { class: 'card' },
      el('h2', {}, p.vin),
      el('p', {}, el('span', { id: 'car-state', class: p.online ? 'online' : 'offline' }, p.online ? 'online' : 'offline'),
        ' · ', el('span', { id: 'car-lock' }, lockText(p)), ' · last seen ', ago(p.last_seen, p.now)),
      el('p', { id: 'car-whitelist', class: p.wl_version > p.wl_acked ? 'waiting' : '' }, 'Whitelist: ', wlText(p, p.now))),
    el('div', { class: 'card' }, el('h3', {}, 'Signals'), el('table', { id: 'car-signals' }, el('tbody', {}, signals))),
    el('div', { class: 'card' }, el('h3', {}, 'Users'),
      p.users.length ? el('table', { id: 'car-users' }, el('tbody', {}, p.users.map((u) => el('tr', { 'data-user': u.user }, el('td', {}, u.user), el('td', {}, u.role),
        el('td', {}, actionButton(`remove-${u.user}`, 'Remove from the car', `Remove ${u.user} from ${p.vin}? Their keys are revoked.`,
          () => call('DELETE', `/cars/${encodeURIComponent(p.vin)}/users/${encodeURIComponent(u.user)}`)))))))
        : el('p', { class: 'muted' }, 'Nobody has a role on this car.')),
    el('div', { class: 'card' }, el('h3', {}, 'Keys'),
      p.keys.length ? el('table', { id: 'car-keys' },
        el('thead', {}, el('tr', {}, ['Key', 'User', 'Role', 'Channels', 'Valid', 'State'].map((h) => el('th', {}, h)))),
        el('tbody', {}, p.keys.map((k) => el('tr', {},
          el('td', {}, el('code', {}, k.id.slice(0, 12)), k.label ? ` ${k.label}` : ''),
          el('td', {}, k.user), el('td', {}, k.role), el('td', {}, (k.channels || []).join(', ')),
          el('td', {}, `${when(k.not_before)} – ${when(k.not_after)}`),
          el('td', { class: k.acked ? '' : 'waiting' }, (k.revoked_at ? 'revoked' : 'active') + (k.acked ? ', on the car' : ', not yet on the car'))))))
        : el('p', { class: 'muted' }, 'No keys.')));
}

// --- command timeline ---

const loadTimeline = oneAtATime(async (vin) => {
  try {
    const tl = await call('GET', `/cars/${encodeURIComponent(vin)}/commands`);
    if (state.view.name === 'car' && state.view.vin === vin) renderTimeline(tl);
  } catch (e) {
    const box = $('#car-commands');
    if (box) box.replaceChildren(el('p', { class: 'error' }, `${e.status}: ${e.message}`));
  }
});

function clock(ms) { return ms ? new Date(ms).toISOString().slice(11, 23) : '–'; }

function renderTimeline(tl) {
  const box = $('#car-commands');
  if (!box) return;
  if (!tl.commands.length) { box.replaceChildren(el('p', { class: 'muted' }, 'No requests recorded.')); return; }
  const day = (ms) => new Date(ms).toISOString().slice(0, 10);
  box.replaceChildren(el('table', { id: 'timeline' },
    el('thead', {}, el('tr', {}, ['Request', 'Who', 'Path', 'Factors', 'States', 'Latency'].map((h) => el('th', {}, h)))),
    el('tbody', {}, tl.commands.map((c) => el('tr', { id: `cmd-${c.id}` },
      el('td', {}, `${c.action || '?'} `, el('code', { class: 'muted' }, c.id.slice(0, 10)), el('div', { class: 'muted' }, day(c.states[0].at))),
      el('td', {}, c.user || '–'),
      el('td', {}, c.path === 'local' ? 'local (journal)' : 'cloud'),
      el('td', {}, c.factors.join(' + ') || '–'),
      el('td', { class: 'states' }, c.states.map((st) => el('div', { class: stateClass(st.state), 'data-step': st.step },
        `${clock(st.at)} ${stateLabel(st)}` + (st.detail && st.step !== 'late' ? ` · ${st.detail}` : '')))),
      el('td', { class: 'num latency' }, c.latency_ms ? `${c.latency_ms} ms` : '–',
        c.decision_ms ? el('div', { class: 'muted' }, `decided in ${c.decision_ms} ms`) : ''))))));
}

// stateLabel says what a step of a request's life was (the server names the step).
function stateLabel(st) {
  const why = st.reason ? ` (${st.reason})` : '';
  const outcome = st.state === 'rejected' ? `refused${why}` : st.state + why;
  switch (st.step) {
    case 'received': return 'received';
    case 'decided': return `decided: ${outcome}`;
    case 'sent': return 'sent to the car';
    case 'car': return `${st.state === 'rejected' ? `refused by the car${why}` : outcome} (car's clock)`;
    case 'result': return st.state === 'expired' ? 'expired: no result from the car' : `result: ${outcome}`;
    case 'late': return `late result: ${st.detail || '?'}`;
    case 'journal': return `${outcome} on the local link (car's clock)`;
  }
  return outcome;
}

function stateClass(s) {
  if (s === 'executed' || s === 'accepted') return 'ok';
  if (s === 'rejected' || s === 'failed' || s === 'expired' || s === 'refused' || s === 'late_result') return 'error';
  return '';
}

// --- users page ---

function showUsers() {
  state.view = { name: 'users' };
  header();
  setMain(el('div', { class: 'card' }, el('h2', {}, 'Users'), el('div', { id: 'users' }, el('p', { class: 'muted' }, 'Loading…'))));
  loadUsers();
}

async function loadUsers() {
  try {
    const u = await call('GET', '/users');
    if (state.view.name === 'users') renderUsers(u);
  } catch (e) {
    if (e.status === 401) { state.session = null; route(); return; }
    const box = $('#users');
    if (box) box.replaceChildren(el('p', { class: 'error' }, `${e.status}: ${e.message}`));
  }
}

function renderUsers(u) {
  const box = $('#users');
  if (!box) return;
  const when = (ms) => new Date(ms).toISOString().replace('T', ' ').replace(/\..*/, ' UTC');
  box.replaceChildren(el('table', { id: 'users-table' },
    el('thead', {}, el('tr', {}, ['User', '2FA', 'Lockouts', 'Cars', 'Keys', ''].map((h) => el('th', {}, h)))),
    el('tbody', {}, u.users.map((x) => el('tr', { id: `user-${x.name}` },
      el('td', {}, x.name, x.disabled ? el('span', { class: 'muted' }, ' (disabled)') : ''),
      el('td', { 'data-field': '2fa', class: x.totp_enrolled ? 'ok' : 'muted' }, x.totp_enrolled ? 'enrolled' : x.totp_pending ? 'pending' : 'not enrolled'),
      el('td', { 'data-field': 'lockouts', class: x.lockouts.length ? 'waiting' : '' },
        x.lockouts.length ? x.lockouts.map((l) => el('div', {}, `${l.factor}: ${l.cause || 'failures'}` + (l.failures ? `, ${l.failures} failures` : '') + ` until ${when(l.until)}`)) : 'none'),
      el('td', {}, x.cars.map((c) => el('div', {}, el('a', { href: `#car/${c.vin}` }, c.vin), ` ${c.role}`))),
      el('td', {}, x.keys.map((k) => el('div', {}, el('code', {}, k.id.slice(0, 10)), ` ${k.vin.slice(-6)} ${k.role}` + (k.revoked_at ? ' revoked' : '') + (k.acked ? '' : ' (not yet on the car)')))),
      el('td', {},
        actionButton(`unlock-${x.name}`, 'Clear lockout', `Clear the lockouts of ${x.name}?`, () => call('POST', `/users/${encodeURIComponent(x.name)}/unlock`, {})), ' ',
        actionButton(`reset2fa-${x.name}`, 'Reset 2FA', `Remove the 2FA enrollment of ${x.name}? They must enroll again.`,
          () => call('POST', `/users/${encodeURIComponent(x.name)}/reset-2fa`, {}))))))));
}

// --- admin actions: each asks first; the answer (or the server's refusal) is shown ---

function actionButton(id, label, question, act) {
  const out = el('span', { id: `${id}-result` });
  const b = el('button', { id, class: 'action', onclick: async () => {
    out.textContent = '';
    if (!confirm(question)) return;
    try {
      await act();
      out.textContent = ' done';
      out.className = 'ok';
      if (state.view.name === 'users') loadUsers();
      if (state.view.name === 'car') loadCar(state.view.vin);
    } catch (e) {
      out.textContent = ` ${e.status} ${e.reason}: ${e.message}`;
      out.className = 'error';
    }
  } }, label);
  return el('span', {}, b, out);
}

function adminBox(id, actions, ...options) {
  const result = el('div', { id: `${id}-result` });
  return el('div', { class: 'card', id },
    el('strong', {}, 'Admin '),
    actions.map(([label, key, question, act]) => el('button', { id: `${id}-${key}`, onclick: async () => {
      result.replaceChildren();
      if (!confirm(question())) return;
      try {
        result.replaceChildren(await act());
        result.className = 'ok';
      } catch (e) {
        result.replaceChildren(`${e.status} ${e.reason}: ${e.message}`);
        result.className = 'error';
      }
    } }, label)),
    ' ', options,
    result);
}

// --- start ---

$('#logout').addEventListener('click', async () => {
  try { await call('POST', '/logout', {}); } catch { /* ended already */ }
  stopEvents();
  state.session = null;
  location.hash = '#login';
  route();
});
window.addEventListener('hashchange', route);

(async () => {
  try {
    state.session = await call('GET', '/session');
    onLoggedIn();
  } catch {
    state.session = null;
    route();
  }
})();
