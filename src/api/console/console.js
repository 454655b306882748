// The operator console. No framework and no build step: it reads the admin JSON API
// with the token kept in this tab's sessionStorage and draws it with createElement and
// textContent only. Nothing the server sends is ever parsed as HTML, so a message body
// carrying <script> is shown as the characters it is.
'use strict';

(() => {
  const TOKEN_KEY = 'order-timeout.admin-token';
  const REFRESH_MS = 3000;
  const PAGE_SIZE = 20;
  const BODY_PREVIEW = 120;

  const $ = (id) => document.getElementById(id);
  const ui = {
    overview: null,
    timer: null,
    // cursors[i] is the `after` of page i; page 0 starts at the newest row.
    cursors: [null],
    page: 0,
    next: null,
    selected: null,
    // The bulk extension the last dry run counted ({request, matched}); null until one ran
    // for the form as it is now.
    extendCounted: null,
  };

  // ---- DOM helpers: text only ------------------------------------------------------

  /** An element with attributes and children; strings become text nodes. */
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'class') node.className = value;
      else if (name === 'onclick') node.addEventListener('click', value);
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(id, text) {
    $(id).textContent = text;
  }

  function show(id, visible) {
    $(id).hidden = !visible;
  }

  function fields(list, pairs) {
    const nodes = [];
    for (const [name, value] of pairs) {
      nodes.push(el('dt', {}, name), el('dd', {}, value === null || value === undefined || value === '' ? '–' : value));
    }
    list.replaceChildren(...nodes);
  }

  // ---- formatting ------------------------------------------------------------------

  function when(iso) {
    if (!iso) return '–';
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toISOString().replace('T', ' ').replace('Z', ' UTC');
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return '–';
    const sign = ms < 0 ? '−' : '';
    const abs = Math.abs(ms);
    if (abs < 1000) return `${sign}${Math.round(abs)} ms`;
    if (abs < 60000) return `${sign}${(abs / 1000).toFixed(1)} s`;
    if (abs < 3600000) return `${sign}${Math.floor(abs / 60000)} min ${Math.round((abs % 60000) / 1000)} s`;
    return `${sign}${Math.floor(abs / 3600000)} h ${Math.round((abs % 3600000) / 60000)} min`;
  }

  function hex(hexText) {
    const pairs = hexText.match(/.{1,2}/g) || [];
    const lines = [];
    for (let i = 0; i < pairs.length; i += 16) lines.push(pairs.slice(i, i + 16).join(' '));
    return lines.join('\n');
  }

  // ---- the API ---------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** Calls the admin API with `token` (the stored one by default) and an optional JSON body. */
  async function api(method, path, token, body) {
    const bearer = token ?? sessionStorage.getItem(TOKEN_KEY);
    if (!bearer) throw new ApiError(401, 'unauthorized', 'no token');
    const headers = { Authorization: `Bearer ${bearer}`, Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, {
        method,
        cache: 'no-store',
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new ApiError(0, 'network', `the service did not answer (${error.message})`);
    }
    if (response.status === 204) return null;
    let answer = null;
    try {
      answer = await response.json();
    } catch (_) {
      answer = null;
    }
    if (!response.ok) {
      const error = (answer && answer.error) || {};
      const message = error.field ? `${error.field}: ${error.message}` : error.message;
      throw new ApiError(response.status, error.code || `http_${response.status}`, message || response.statusText);
    }
    return answer;
  }

  /** Explains a refusal of the token, or returns null for other errors. */
  function refusal(error) {
    if (error.status === 401) return 'Wrong token: the server refused it (401 unauthorized). Check ADMIN_TOKEN and sign in again.';
    if (error.code === 'admin_disabled') return 'The admin API is disabled on this server: start it with ADMIN_TOKEN set.';
    return null;
  }

  /** Handles an error of a call made while signed in: a refused token signs out. */
  function failed(error) {
    const reason = refusal(error);
    if (reason) signOut(reason);
    return `${error.code}: ${error.message}`;
  }

  // ---- sign in and out ---------------------------------------------------------------

  async function signIn(event) {
    event.preventDefault();
    const token = $('token').value.trim();
    if (!token) {
      setText('login-error', 'A token is required: enter the ADMIN_TOKEN the server was started with.');
      return;
    }
    setText('login-error', 'Checking the token…');
    try {
      const overview = await api('GET', '/admin/overview', token);
      sessionStorage.setItem(TOKEN_KEY, token);
      $('token').value = '';
      setText('login-error', '');
      enter(overview);
    } catch (error) {
      setText('login-error', refusal(error) || `Could not sign in: ${error.code}: ${error.message}`);
    }
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    clearInterval(ui.timer);
    ui.timer = null;
    show('console', false);
    show('session', false);
    show('login', true);
    setText('login-error', message || '');
    $('token').focus();
  }

  function enter(overview) {
    show('login', false);
    show('console', true);
    show('session', true);
    renderOverview(overview);
    loadFailed();
    clearInterval(ui.timer);
    ui.timer = setInterval(tick, REFRESH_MS);
  }

  async function start() {
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      signOut('');
      return;
    }
    try {
      enter(await api('GET', '/admin/overview'));
    } catch (error) {
      signOut(refusal(error) || `Could not load the overview: ${error.code}: ${error.message}`);
    }
  }

  // ---- overview ----------------------------------------------------------------------

  async function tick() {
    await refreshOverview();
    await loadFailed();
  }

  async function refreshOverview() {
    try {
      renderOverview(await api('GET', '/admin/overview'));
      show('overview-error', false);
    } catch (error) {
      const message = failed(error);
      setText('overview-error', `Overview not refreshed: ${message}`);
      show('overview-error', true);
    }
  }

  function renderOverview(data) {
    ui.overview = data;
    const up = data.broker.status === 'up';
    const badge = $('broker-status');
    badge.textContent = `broker: ${data.broker.status}`;
    badge.className = `badge ${up ? 'ok' : 'warn'}`;
    setText('broker-node', data.broker.node ? `node ${data.broker.node}` : 'no node reachable');
    setText('db-time', `database time ${when(data.database_time)}`);
    setText('refresh-state', `refreshed every ${REFRESH_MS / 1000} s`);
    renderCounts('orders-counts', 'order', data.orders, ['pending', 'paid', 'cancelled']);
    renderCounts('waybills-counts', 'waybill', data.waybills, ['pending', 'accepted', 'cancelled']);
    setText('outbox-backlog', String(data.outbox.backlog));
    setText('outbox-age', data.outbox.oldest_age_ms === null ? 'nothing waiting for the relay' : `oldest waiting ${duration(data.outbox.oldest_age_ms)}`);
    setText('failed-unresolved', String(data.failed_messages.unresolved));
    renderLateness(data.lateness);
    renderDeadlines(data.next_deadlines);
    renderQueues(data.broker.queues);
    renderQueueFilter(data);
  }

  function renderCounts(id, kind, counts, order) {
    $(id).replaceChildren(
      ...order.map((status) =>
        el('tr', {}, el('th', {}, status), el('td', { class: 'num', 'data-count': `${kind}.${status}` }, counts[status] ?? 0)),
      ),
    );
  }

  function renderLateness(lateness) {
    const strip = [
      ['cancels', lateness.count],
      ['p50', duration(lateness.p50_ms)],
      ['p90', duration(lateness.p90_ms)],
      ['p99', duration(lateness.p99_ms)],
      ['max', duration(lateness.max_ms)],
    ];
    $('lateness-strip').replaceChildren(
      ...strip.map(([name, value]) => el('div', { 'data-stat': name }, el('dt', {}, name), el('dd', {}, value))),
    );
    const most = Math.max(1, ...lateness.histogram.map((bucket) => bucket.count));
    $('lateness-histogram').replaceChildren(
      ...lateness.histogram.map((bucket) => {
        const label = bucket.to_ms === null ? `≥ ${duration(bucket.from_ms)}` : `< ${duration(bucket.to_ms)}`;
        const bar = el('div', { class: 'bar-fill' });
        bar.style.height = `${Math.round((bucket.count / most) * 100)}%`;
        return el(
          'div',
          { class: 'bucket', title: `${bucket.count} cancel(s) ${label}` },
          el('span', { class: 'bucket-count' }, bucket.count),
          el('div', { class: 'bar-track' }, bar),
          el('span', { class: 'bucket-label' }, label),
        );
      }),
    );
  }

  function renderDeadlines(deadlines) {
    if (deadlines.length === 0) {
      $('deadlines').replaceChildren(el('tr', {}, el('td', { colspan: 4, class: 'muted' }, 'nothing pending')));
      return;
    }
    $('deadlines').replaceChildren(
      ...deadlines.map((d) =>
        el(
          'tr',
          {},
          el('td', {}, d.kind),
          el('td', {}, el('button', { type: 'button', class: 'link', onclick: () => lookup(d.id) }, d.id)),
          el('td', {}, when(d.expires_at)),
          el('td', { class: d.ms_left < 0 ? 'warn-text' : '' }, d.ms_left < 0 ? `overdue ${duration(-d.ms_left)}` : duration(d.ms_left)),
        ),
      ),
    );
  }

  function renderQueues(queues) {
    $('queues').replaceChildren(
      ...queues.map((q) =>
        el(
          'tr',
          { 'data-queue': q.name, 'data-role': q.role, class: q.messages ? 'busy' : '' },
          el('td', { class: 'mono' }, q.name),
          el('td', {}, el('span', { class: `role role-${q.role}` }, q.role)),
          el('td', { class: 'num depth', title: q.error || '' }, q.messages === null ? `? (${q.error})` : q.messages),
          el('td', { class: 'num' }, q.consumers === null ? '?' : q.consumers),
        ),
      ),
    );
  }

  /** The queue filter offers the due queue and every queue failures came from. */
  function renderQueueFilter(data) {
    const select = $('filter-queue');
    const names = new Set(data.failed_messages.by_queue.map((c) => c.queue));
    for (const q of data.broker.queues) if (q.role === 'due') names.add(q.name);
    const wanted = [...names].sort();
    const present = [...select.options].slice(1).map((o) => o.value);
    if (wanted.join('\n') === present.join('\n')) return;
    const current = select.value;
    select.replaceChildren(el('option', { value: '' }, 'all queues'), ...wanted.map((name) => el('option', { value: name }, name)));
    select.value = wanted.includes(current) ? current : '';
  }

  // ---- failed messages -----------------------------------------------------------------

  function failedQuery() {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    const queue = $('filter-queue').value;
    const status = $('filter-status').value;
    if (queue) params.set('queue', queue);
    if (status) params.set('status', status);
    const after = ui.cursors[ui.page];
    if (after) params.set('after', after);
    return params;
  }

  async function loadFailed() {
    let listing;
    try {
      listing = await api('GET', `/admin/failed-messages?${failedQuery()}`);
    } catch (error) {
      result(`Could not load failed messages: ${failed(error)}`, true);
      return;
    }
    ui.next = listing.next;
    $('failed-rows').replaceChildren(...listing.items.map(failedRow));
    show('failed-empty', listing.items.length === 0);
    setText('page-info', `page ${ui.page + 1}`);
    $('page-prev').disabled = ui.page === 0;
    $('page-first').disabled = ui.page === 0;
    $('page-next').disabled = !listing.next;
  }

  function failedRow(m) {
    const preview = m.body === null ? `(${m.body_size} bytes, not UTF-8)` : m.body.length > BODY_PREVIEW ? `${m.body.slice(0, BODY_PREVIEW)}…` : m.body;
    return el(
      'tr',
      { 'data-id': m.id, class: ui.selected === m.id ? 'selected' : '' },
      el('td', {}, when(m.last_failed_at)),
      el('td', { class: 'mono' }, m.queue),
      el('td', { class: 'mono' }, m.message_id ?? '–'),
      el('td', { class: 'error-cell', title: m.error }, m.error),
      el('td', { class: 'num' }, m.attempts),
      el('td', { class: 'status' }, el('span', { class: `status-${m.status}` }, m.status)),
      el('td', { class: 'body-cell mono' }, preview),
      el('td', {}, el('button', { type: 'button', class: 'open', onclick: () => openDetail(m.id) }, 'Details')),
    );
  }

  function changeFilter() {
    ui.cursors = [null];
    ui.page = 0;
    loadFailed();
  }

  function nextPage() {
    if (!ui.next) return;
    ui.cursors[ui.page + 1] = ui.next;
    ui.page += 1;
    loadFailed();
  }

  function previousPage() {
    ui.page = Math.max(0, ui.page - 1);
    loadFailed();
  }

  function firstPage() {
    ui.page = 0;
    loadFailed();
  }

  async function openDetail(id) {
    try {
      renderDetail(await api('GET', `/admin/failed-messages/${encodeURIComponent(id)}`));
    } catch (error) {
      result(`Could not open message ${id}: ${failed(error)}`, true);
    }
  }

  function renderDetail(m) {
    ui.selected = m.id;
    for (const row of $('failed-rows').children) row.classList.toggle('selected', row.dataset.id === m.id);
    setText('detail-id', m.id);
    fields($('detail-fields'), [
      ['status', m.status],
      ['queue (origin)', m.queue],
      ['exchange', m.exchange === '' ? '(default exchange)' : m.exchange],
      ['routing key', m.routing_key],
      ['message id', m.message_id],
      ['error class', m.error_class],
      ['error', m.error],
      ['attempts', m.attempts],
      ['first failed', when(m.first_failed_at)],
      ['last failed', when(m.last_failed_at)],
      ['resolved', when(m.resolved_at)],
    ]);
    setText('detail-headers', JSON.stringify(m.headers, null, 2));
    if (m.body === null) {
      setText('detail-body-kind', `hex, not UTF-8, ${m.body_size} bytes`);
      setText('detail-body', hex(m.body_hex));
    } else {
      setText('detail-body-kind', `text, ${m.body_size} bytes`);
      setText('detail-body', m.body);
    }
    const pending = m.status === 'pending';
    $('detail-requeue').disabled = !pending;
    $('detail-discard').disabled = !pending;
    show('detail', true);
  }

  function closeDetail() {
    ui.selected = null;
    show('detail', false);
    for (const row of $('failed-rows').children) row.classList.remove('selected');
  }

  // ---- actions ---------------------------------------------------------------------------

  function result(message, isError) {
    const node = $('action-result');
    node.textContent = message;
    node.className = `result ${isError ? 'error' : 'ok'}`;
    node.hidden = false;
  }

  function confirmAction(text) {
    const dialog = $('confirm');
    setText('confirm-text', text);
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'yes'), { once: true });
      dialog.returnValue = '';
      dialog.showModal();
    });
  }

  /** Runs an action, shows its outcome, then refreshes the table and the overview. */
  async function act(run) {
    try {
      result(await run(), false);
    } catch (error) {
      result(`Failed: ${failed(error)}`, true);
    }
    await Promise.all([loadFailed(), refreshOverview()]);
  }

  function requeueSelected() {
    const id = ui.selected;
    if (!id) return;
    act(async () => {
      const m = await api('POST', `/admin/failed-messages/${encodeURIComponent(id)}/requeue`);
      renderDetail(await api('GET', `/admin/failed-messages/${encodeURIComponent(id)}`));
      return `Requeued message ${m.id} to ${m.queue}; it is now ${m.status}.`;
    });
  }

  async function discardSelected() {
    const id = ui.selected;
    if (!id || !(await confirmAction(`Discard message ${id}? It stays stored, marked discarded, for audit.`))) return;
    act(async () => {
      await api('DELETE', `/admin/failed-messages/${encodeURIComponent(id)}`);
      renderDetail(await api('GET', `/admin/failed-messages/${encodeURIComponent(id)}`));
      return `Discarded message ${id}.`;
    });
  }

  async function requeueAll() {
    await refreshOverview();
    const queue = $('filter-queue').value;
    const counts = ui.overview ? ui.overview.failed_messages.by_queue : [];
    const unresolved = counts.filter((c) => c.status === 'pending' && (!queue || c.queue === queue)).reduce((sum, c) => sum + c.count, 0);
    const where = queue ? ` from ${queue}` : '';
    if (unresolved === 0) {
      result(`Nothing to requeue: no unresolved failed messages${where}.`, false);
      return;
    }
    if (!(await confirmAction(`Requeue all ${unresolved} unresolved failed message(s)${where}?`))) return;
    const path = queue ? `/admin/failed-messages/requeue?${new URLSearchParams({ queue })}` : '/admin/failed-messages/requeue';
    act(async () => {
      const done = await api('POST', path);
      return `Requeued ${done.requeued} message(s)${where}.`;
    });
  }

  async function replayParking() {
    await refreshOverview();
    const parking = ui.overview ? ui.overview.broker.queues.find((q) => q.role === 'parking') : null;
    const depth = parking && parking.messages !== null ? parking.messages : null;
    if (depth === 0) {
      result('Nothing to replay: the parking queue is empty.', false);
      return;
    }
    const count = depth === null ? 'every message' : `${depth} message(s)`;
    if (!(await confirmAction(`Replay ${count} from the parking queue into the due queue?`))) return;
    act(async () => {
      const done = await api('POST', '/admin/parking/requeue');
      return `Replayed ${done.requeued} message(s) from the parking queue into the due queue.`;
    });
  }

  // ---- bulk extension ----------------------------------------------------------------------

  /** The request the form describes, without `dry_run`; empty filters are left out. */
  function extendRequest() {
    const kind = $('extend-kind').value;
    const request = { kind, seconds: Number($('extend-seconds').value) };
    const customer = $('extend-customer').value.trim();
    const order = $('extend-order').value.trim();
    const before = $('extend-before').value.trim();
    if (kind === 'order' && customer) request.customer_id = customer;
    if (kind === 'waybill' && order) request.order_id = order;
    if (before) request.expires_before = before;
    return request;
  }

  function extendResult(message, isError) {
    const node = $('extend-result');
    node.textContent = message;
    node.className = `result ${isError ? 'error' : 'ok'}`;
    node.hidden = false;
  }

  /** Any change to the form invalidates the count: extending needs a fresh dry run. */
  function extendChanged() {
    ui.extendCounted = null;
    $('extend-run').disabled = true;
    $('extend-run').textContent = 'Extend…';
    const orders = $('extend-kind').value === 'order';
    $('extend-customer-label').hidden = !orders;
    $('extend-order-label').hidden = orders;
  }

  /** The dry run: shows how many entities the real run would extend. */
  async function countExtension(event) {
    if (event) event.preventDefault();
    const request = extendRequest();
    try {
      const done = await api('POST', '/admin/deadlines/extend', undefined, { ...request, dry_run: true });
      const what = done.matched === 1 ? `${request.kind} matches` : `${request.kind}s match`;
      extendResult(`${done.matched} pending ${what}; nothing changed yet (dry run).`, false);
      ui.extendCounted = { request, matched: done.matched };
      $('extend-run').disabled = done.matched === 0;
      $('extend-run').textContent = `Extend ${done.matched}…`;
    } catch (error) {
      extendChanged();
      extendResult(`Refused: ${failed(error)}`, true);
    }
  }

  async function runExtension() {
    const counted = ui.extendCounted;
    if (!counted) return;
    const { request, matched } = counted;
    if (!(await confirmAction(`Extend the deadline of ${matched} pending ${request.kind}(s) by ${request.seconds} s?`))) return;
    try {
      const done = await api('POST', '/admin/deadlines/extend', undefined, { ...request, dry_run: false });
      extendResult(`Extended ${done.extended} of ${done.matched} matching ${request.kind}(s) by ${request.seconds} s.`, false);
    } catch (error) {
      extendResult(`Failed: ${failed(error)}`, true);
    }
    extendChanged();
    await refreshOverview();
  }

  // ---- lookup ----------------------------------------------------------------------------

  function lookup(id) {
    $('lookup-id').value = id;
    runLookup();
    $('lookup').scrollIntoView({ behavior: 'smooth' });
  }

  async function runLookup(event) {
    if (event) event.preventDefault();
    const id = $('lookup-id').value.trim();
    show('lookup-result', false);
    if (!id) {
      setText('lookup-error', 'Enter an order or waybill id.');
      return;
    }
    setText('lookup-error', '');
    try {
      renderLookup(await api('GET', `/admin/lookup/${encodeURIComponent(id)}`));
    } catch (error) {
      const messages = { invalid_id: 'Not a valid id: ids are UUIDs.', not_found: 'No order or waybill has this id.' };
      setText('lookup-error', messages[error.code] || `Lookup failed: ${failed(error)}`);
    }
  }

  function renderLookup(found) {
    const e = found.entity;
    const deadline = found.expired ? `passed ${duration(-found.ms_left)} ago` : `in ${duration(found.ms_left)}`;
    const pairs = [
      ['kind', found.kind],
      ['id', e.id],
      ['status', e.status],
      ['deadline', `${when(e.expires_at)} (${deadline}, database time)`],
      ['created', when(e.created_at)],
    ];
    if (found.kind === 'order') {
      pairs.push(['customer', e.customer_id], ['amount', `${e.amount_cents} ${e.currency} cents`], ['paid', when(e.paid_at)]);
    } else {
      pairs.push(['route', `${e.origin} → ${e.destination}`], ['carrier', e.carrier_id], ['accepted', when(e.accepted_at)]);
    }
    pairs.push(['cancelled', e.cancelled_at ? `${when(e.cancelled_at)} (${e.cancel_reason})` : '–']);
    fields($('lookup-fields'), pairs);
    $('lookup-deadline').replaceChildren(
      ...found.deadline_history.map((h) =>
        el('tr', {}, el('td', {}, when(h.at)), el('td', {}, h.event), el('td', {}, h.old_expires_at ? `${when(h.old_expires_at)} → ${when(h.expires_at)}` : when(h.expires_at)), el('td', {}, h.source)),
      ),
    );
    $('lookup-timeline').replaceChildren(...timeline(found).map(([at, text]) => el('li', {}, el('time', {}, when(at)), ' ', text)));
    $('lookup-outbox').replaceChildren(
      ...found.outbox.map((row) =>
        el('tr', {}, el('td', {}, row.id), el('td', {}, row.topic), el('td', { class: 'mono' }, row.routing_key), el('td', {}, when(row.created_at)), el('td', {}, row.published_at ? when(row.published_at) : 'not yet (backlog)'), el('td', {}, when(row.due_at))),
      ),
    );
    $('lookup-failed').replaceChildren(
      ...(found.failed_messages.length === 0
        ? [el('tr', {}, el('td', { colspan: 6, class: 'muted' }, 'none'))]
        : found.failed_messages.map((f) =>
            el('tr', {}, el('td', { class: 'mono' }, f.id), el('td', { class: 'mono' }, f.queue), el('td', {}, f.error), el('td', { class: 'num' }, f.attempts), el('td', {}, f.status), el('td', {}, when(f.last_failed_at))),
          )),
    );
    show('lookup-result', true);
  }

  /** Events of the entity in time order: its own timestamps and its outbox rows. */
  function timeline(found) {
    const e = found.entity;
    const steps = [[e.created_at, `created, pending until ${when(e.expires_at)}`]];
    if (e.paid_at) steps.push([e.paid_at, 'paid']);
    if (e.accepted_at) steps.push([e.accepted_at, `accepted by carrier ${e.carrier_id}`]);
    if (e.cancelled_at) {
      const late = new Date(e.cancelled_at) - new Date(e.expires_at);
      steps.push([e.cancelled_at, `cancelled: ${e.cancel_reason}${late >= 0 ? ` (${duration(late)} after the deadline)` : ''}`]);
    }
    for (const row of found.outbox) {
      const what = row.topic === 'timer' ? `timer written for bucket ${row.routing_key}` : `event ${row.routing_key} written`;
      const published = row.published_at ? `, published ${when(row.published_at)}` : ', not published yet';
      steps.push([row.created_at, what + published]);
    }
    for (const h of found.deadline_history) {
      if (h.event === 'extended') steps.push([h.at, `deadline extended (${h.source}) from ${when(h.old_expires_at)} to ${when(h.expires_at)}`]);
      if (h.event === 'reminded') steps.push([h.at, `reminder sent for the deadline ${when(h.expires_at)}`]);
    }
    for (const f of found.failed_messages) steps.push([f.last_failed_at, `timer message failed (${f.attempts} attempts, ${f.status}): ${f.error}`]);
    return steps.sort((a, b) => new Date(a[0]) - new Date(b[0]));
  }

  // ---- wiring ------------------------------------------------------------------------------

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', signIn);
    $('sign-out').addEventListener('click', () => signOut('Signed out.'));
    $('filter-queue').addEventListener('change', changeFilter);
    $('filter-status').addEventListener('change', changeFilter);
    $('refresh-failed').addEventListener('click', () => loadFailed());
    $('page-next').addEventListener('click', nextPage);
    $('page-prev').addEventListener('click', previousPage);
    $('page-first').addEventListener('click', firstPage);
    $('detail-requeue').addEventListener('click', requeueSelected);
    $('detail-discard').addEventListener('click', discardSelected);
    $('detail-close').addEventListener('click', closeDetail);
    $('requeue-all').addEventListener('click', requeueAll);
    $('replay-parking').addEventListener('click', replayParking);
    $('lookup-form').addEventListener('submit', runLookup);
    $('extend-form').addEventListener('submit', countExtension);
    $('extend-form').addEventListener('input', extendChanged);
    $('extend-kind').addEventListener('change', extendChanged);
    $('extend-run').addEventListener('click', runExtension);
    start();
  });
})();
