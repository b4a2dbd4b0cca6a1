/* courthub hearing console: the judge's and clerk's page of one courtroom or interrogation room.
 *
 * Data: the page's JSON (<script id="hearing-data">: venues, cameras, permissions); hearings from
 * GET /api/v1/hearings (polled every 4 s and after every action); the selected hearing's
 * transcript and notes from GET /api/v1/hearings/{id}/transcript (?after=<last segment id> to
 * catch up after a (re)connect, and with every poll: others' notes, missed finals) and its
 * events from GET …/events. Live partial and final
 * segments arrive on the console's WebSocket topic "transcript" (Courthub.connectLive).
 *
 * Actions (Courthub.api, CSRF header): POST /api/v1/hearings (new hearing), …/{id}/start,
 * /recess {reason}, /resume, /close, /seal (close and seal ask first); the export is a download
 * link to GET …/{id}/export once sealed. A refused action (409) shows its message inline.
 * Clerk corrections: click a line, Enter saves (POST /api/v1/transcript/segments/{id}/revise),
 * Esc cancels. Notes: POST …/{id}/notes at "now" (court clock). All times in the court's zone.
 *
 * Playback (closed or sealed hearing): the hearing's segments from
 * GET /api/v1/recordings/segments?session=<id>, played from GET …/segments/{id}/media: one seat's
 * audio (picker) and, if the user may watch a camera that recorded, its video following the audio.
 * A click on a line switches to its seat and seeks there (a double-click corrects it); the lines
 * being heard are highlighted; at a segment's end play goes on with the track's next segment.
 */
(function () {
  "use strict";

  const C = window.Courthub;
  const t = C.t;
  const dataEl = document.getElementById("hearing-data");
  if (!dataEl) {
    return;
  }
  const DATA = JSON.parse(dataEl.textContent || "{}");
  const POLL_MS = 4000;
  const STORE = "courthub.hearing.venue";
  const SEAT_COLOURS = 8;

  const venueSelect = document.getElementById("venue-select");
  const hearingSelect = document.getElementById("hearing-select");
  const banner = document.getElementById("hearing-banner");
  const stateEl = document.getElementById("hearing-state");
  const titleEl = document.getElementById("hearing-title");
  const sinceEl = document.getElementById("hearing-since");
  const lockEl = document.querySelector(".hearing-lock");
  const errorEl = document.getElementById("hearing-error");
  const reasonSelect = document.getElementById("recess-reason");
  const exportLink = document.getElementById("act-export");
  const newBox = document.getElementById("hearing-new");
  const newForm = document.getElementById("new-form");
  const transcriptEl = document.getElementById("transcript");
  const partialsEl = document.getElementById("partials");
  const transcriptEmpty = document.getElementById("transcript-empty");
  const notesEl = document.getElementById("notes");
  const noteForm = document.getElementById("note-form");
  const noteText = document.getElementById("note-text");
  const eventsEl = document.getElementById("events");
  const tilesEl = document.getElementById("video-tiles");
  const videoEmpty = document.getElementById("video-empty");
  const confirmDialog = document.getElementById("confirm");

  let hearings = [];
  /* the hearing shown, and whether the user picked it (else the venue's current one is followed) */
  let shownId = "";
  let picked = false;
  let shown = null;
  /* transcript of the shown hearing: segment id -> line element; the largest id seen */
  let lines = new Map();
  let lastId = 0;
  const seatColour = new Map();
  let readOnly = false;
  let busy = false;
  /* the reason of the latest break (from the events), for the recess banner */
  let lastRecessReason = "";

  /* ---------------------------------------------------------------------------------- helpers */
  function clock(ms) {
    return C.formatTime(ms).slice(11);
  }

  function showError(text) {
    errorEl.textContent = text || "";
    errorEl.hidden = !text;
  }

  function label(prefix, value) {
    const key = prefix + value;
    const text = t(key);
    return text === key ? value : text;
  }

  function seatName(seat) {
    return label("js.hearing.seat.", seat);
  }

  function colourOf(seat) {
    if (!seatColour.has(seat)) {
      seatColour.set(seat, seatColour.size % SEAT_COLOURS);
    }
    return seatColour.get(seat);
  }

  function venue() {
    return venueSelect.value;
  }

  function venueName(id) {
    const v = (DATA.venues || []).find(function (x) { return x.id === id; });
    return v ? v.name : id;
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) {
      node.className = cls;
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  /* ---------------------------------------------------------------------------------- hearings */
  function ofVenue(id) {
    return hearings.filter(function (h) { return h.venues.indexOf(id) >= 0; });
  }

  /* the venue's hearing that is on (open or recess), else the next scheduled, else the newest */
  function currentOf(list) {
    return list.find(function (h) { return h.state === "open" || h.state === "recess"; }) ||
      list.find(function (h) { return h.state === "scheduled"; }) ||
      list[0] || null;
  }

  function hearingLabel(h) {
    const title = h.case_no ? h.case_no + " " + h.title : h.title;
    return title + " · " + t("js.hearing.state." + h.state);
  }

  async function loadHearings() {
    const result = await C.api("GET", "/api/v1/hearings");
    if (!result.ok) {
      showError(t("js.hearing.load_failed", { error: result.error }));
      return;
    }
    hearings = result.data.hearings || [];
    for (const h of hearings) {
      for (const v of h.venues) {
        if (!venueSelect.querySelector('option[value="' + CSS.escape(v) + '"]')) {
          venueSelect.appendChild(new Option(v, v));
        }
      }
    }
    renderHearings();
  }

  function renderHearings() {
    const list = ofVenue(venue());
    if (!picked || !list.some(function (h) { return h.id === shownId; })) {
      picked = false;
      const current = currentOf(list);
      shownId = current ? current.id : "";
    }
    hearingSelect.replaceChildren();
    for (const h of list) {
      hearingSelect.appendChild(new Option(hearingLabel(h), h.id, false, h.id === shownId));
    }
    hearingSelect.disabled = list.length === 0;
    const next = list.find(function (h) { return h.id === shownId; }) || null;
    const changed = (next ? next.id : "") !== (shown ? shown.id : "");
    const stateChanged = changed || (next && shown && (next.state !== shown.state || next.held !== shown.held));
    shown = next;
    renderBanner();
    renderControls();
    if (changed) {
      resetTranscript();
      if (shown) {
        loadTranscript(0);
      }
    }
    if (stateChanged) {
      loadEvents();
      loadPlayback();
    }
  }

  function renderBanner() {
    const h = shown;
    const state = h ? h.state : "none";
    banner.dataset.state = state;
    lockEl.toggleAttribute("hidden", state !== "sealed"); /* an SVG element has no .hidden */
    if (!h) {
      stateEl.textContent = t("js.hearing.none_in", { venue: venueName(venue()) });
      titleEl.textContent = "";
      sinceEl.textContent = "";
      return;
    }
    if (state === "recess") {
      const reason = lastRecessReason || "recess";
      stateEl.textContent = t("js.hearing.banner.recess", { reason: label("js.hearing.reason.", reason) });
    } else {
      stateEl.textContent = t("js.hearing.banner." + state);
    }
    titleEl.textContent = [h.case_no, h.title].filter(Boolean).join("  ");
    if (state === "scheduled") {
      sinceEl.textContent = h.scheduled_ms ? t("js.hearing.scheduled_for", { time: C.formatTime(h.scheduled_ms) }) : "";
    } else if (state === "open" || state === "recess") {
      sinceEl.textContent = t("js.hearing.opened_at", { time: C.formatTime(h.opened_ms) });
    } else if (state === "closed") {
      sinceEl.textContent = t("js.hearing.closed_at", { time: C.formatTime(h.closed_ms) });
    } else {
      sinceEl.textContent = t("js.hearing.sealed_at", { time: C.formatTime(h.sealed_ms) });
    }
  }

  function renderControls() {
    const state = shown ? shown.state : "none";
    const can = !!DATA.can_control && !busy;
    const enabled = {
      start: state === "scheduled",
      recess: state === "open",
      resume: state === "recess",
      close: state === "open" || state === "recess",
      seal: state === "closed",
    };
    for (const button of document.querySelectorAll("[data-action]")) {
      button.disabled = !can || !enabled[button.dataset.action];
    }
    reasonSelect.disabled = !can || !enabled.recess;
    const exportable = state === "sealed" && !!DATA.can_export;
    if (exportable) {
      exportLink.href = "/api/v1/hearings/" + encodeURIComponent(shown.id) + "/export";
      exportLink.setAttribute("download", shown.id + ".zip");
      exportLink.removeAttribute("aria-disabled");
    } else {
      exportLink.removeAttribute("href");
      exportLink.setAttribute("aria-disabled", "true");
    }
    /* a new hearing: offered when the venue has none going on */
    const going = ofVenue(venue()).some(function (h) { return h.state === "open" || h.state === "recess" || h.state === "scheduled"; });
    newBox.hidden = !DATA.can_control;
    if (!going && DATA.can_control && !newBox.dataset.touched) {
      newBox.open = true;
    } else if (going && !newBox.dataset.touched) {
      newBox.open = false;
    }
    readOnly = state === "sealed";
    const annotate = !!shown && !!DATA.can_annotate && !readOnly;
    noteText.disabled = !annotate;
    noteForm.querySelector("button").disabled = !annotate;
    transcriptEl.classList.toggle("editable", !!shown && !!DATA.can_revise && !readOnly);
    transcriptEl.classList.toggle("playable", playbackOn());
  }

  /* ---------------------------------------------------------------------------------- actions */
  function confirmFirst(text) {
    return new Promise(function (resolve) {
      document.getElementById("confirm-text").textContent = text;
      const ok = document.getElementById("confirm-ok");
      const cancel = document.getElementById("confirm-cancel");
      function done(answer) {
        ok.onclick = null;
        cancel.onclick = null;
        confirmDialog.onclose = null;
        if (confirmDialog.open) {
          confirmDialog.close();
        }
        resolve(answer);
      }
      ok.onclick = function () { done(true); };
      cancel.onclick = function () { done(false); };
      confirmDialog.onclose = function () { done(false); };
      confirmDialog.showModal();
    });
  }

  async function act(action) {
    if (!shown) {
      return;
    }
    showError("");
    if (action === "close" || action === "seal") {
      const question = action === "close" ? "js.hearing.confirm_close" : "js.hearing.confirm_seal";
      const ok = await confirmFirst(t(question, { title: shown.title || shown.id }));
      if (!ok) {
        return;
      }
    }
    const payload = action === "recess" ? { reason: reasonSelect.value } : undefined;
    busy = true;
    renderControls();
    const result = await C.api("POST", "/api/v1/hearings/" + encodeURIComponent(shown.id) + "/" + action, payload);
    busy = false;
    if (!result.ok) {
      showError(t("js.hearing.refused", { error: result.error }));
    } else if (action === "recess") {
      lastRecessReason = reasonSelect.value;
    }
    await loadHearings();
    await loadEvents();
  }

  for (const button of document.querySelectorAll("[data-action]")) {
    button.addEventListener("click", function () {
      act(button.dataset.action);
    });
  }

  newBox.addEventListener("toggle", function () {
    newBox.dataset.touched = "1";
    if (!newBox.open) {
      showError(""); /* a refused new hearing's message goes with its form */
    }
  });

  newForm.addEventListener("submit", async function (event) {
    event.preventDefault();
    showError("");
    const later = newForm.querySelector('input[name="when"]:checked').value === "later";
    const body = {
      title: document.getElementById("new-title").value.trim(),
      case_no: document.getElementById("new-case").value.trim(),
      venues: [venue()],
      schedule: later,
      scheduled_ms: later ? C.localToUtcMs(document.getElementById("new-at").value) : null,
    };
    const result = await C.api("POST", "/api/v1/hearings", body);
    if (!result.ok) {
      showError(t("js.hearing.refused", { error: result.error }));
      return;
    }
    newForm.reset();
    delete newBox.dataset.touched;
    picked = true;
    shownId = result.data.id;
    await loadHearings();
  });

  venueSelect.addEventListener("change", function () {
    localStorage.setItem(STORE, venue());
    picked = false;
    showError("");
    delete newBox.dataset.touched;
    renderHearings();
    renderTiles();
  });

  hearingSelect.addEventListener("change", function () {
    picked = true;
    shownId = hearingSelect.value;
    renderHearings();
  });

  /* ---------------------------------------------------------------------------------- events */
  async function loadEvents() {
    const h = shown;
    if (!h) {
      eventsEl.replaceChildren();
      return;
    }
    const result = await C.api("GET", "/api/v1/hearings/" + encodeURIComponent(h.id) + "/events");
    if (!result.ok || !shown || shown.id !== h.id) {
      return;
    }
    const events = result.data.events || [];
    eventsEl.replaceChildren();
    for (const e of events) {
      const li = el("li", "hearing-event");
      li.dataset.state = e.state;
      li.appendChild(el("time", "mono", C.formatTime(e.ts_ms)));
      let what = t("js.hearing.event." + e.state);
      if (e.state === "recess" && e.reason) {
        what += "（" + label("js.hearing.reason.", e.reason) + "）";
      }
      li.appendChild(el("span", "hearing-event-what", what));
      li.appendChild(el("span", "muted", e.by));
      eventsEl.appendChild(li);
      if (e.state === "recess") {
        lastRecessReason = e.reason;
      }
    }
    renderBanner();
  }

  /* ---------------------------------------------------------------------------------- transcript */
  function resetTranscript() {
    lines = new Map();
    lastId = 0;
    transcriptEl.replaceChildren();
    partialsEl.replaceChildren();
    notesEl.replaceChildren();
    transcriptEmpty.hidden = false;
  }

  function seatBadge(seat) {
    const span = el("span", "tx-seat seat-c" + colourOf(seat), seatName(seat));
    span.dataset.seat = seat;
    return span;
  }

  function fillLine(li, segment) {
    li.dataset.segment = String(segment.id);
    li.dataset.seat = segment.seat;
    li.dataset.startUs = String(segment.start_us);
    li.dataset.endUs = String(segment.end_us);
    const corrected = segment.revisions && segment.revisions.length > 0;
    li.classList.toggle("corrected", corrected);
    li.replaceChildren(
      el("time", "tx-time mono", clock(Math.floor(segment.start_us / 1000))),
      seatBadge(segment.seat),
      el("span", "tx-text", segment.text)
    );
    if (corrected) {
      const last = segment.revisions[segment.revisions.length - 1];
      const mark = el("span", "tx-mark", t("js.hearing.corrected"));
      mark.dataset.testid = "tx-corrected";
      li.appendChild(mark);
      li.title = t("js.hearing.machine_text", { text: segment.machine_text, by: last.by, time: C.formatTime(last.at_ms) });
    } else {
      li.removeAttribute("title");
    }
  }

  function addSegment(segment) {
    if (!shown || segment.hearing !== shown.id) {
      return;
    }
    lastId = Math.max(lastId, segment.id);
    let li = lines.get(segment.id);
    if (li) {
      if (!li.classList.contains("editing")) {
        fillLine(li, segment);
      }
    } else {
      li = el("li", "tx-line");
      li.tabIndex = 0;
      fillLine(li, segment);
      lines.set(segment.id, li);
      /* in time order: seats speak over each other, finals may arrive out of order */
      let before = null;
      for (const other of transcriptEl.children) {
        const start = Number(other.dataset.startUs);
        if (start > segment.start_us || (start === segment.start_us && Number(other.dataset.segment) > segment.id)) {
          before = other;
          break;
        }
      }
      transcriptEl.insertBefore(li, before);
    }
    /* the seat's utterance in progress is now this final */
    const partial = partialsEl.querySelector('[data-seat="' + CSS.escape(segment.seat) + '"]');
    if (partial) {
      partial.remove();
    }
    transcriptEmpty.hidden = lines.size > 0;
    if (!li.classList.contains("editing") && transcriptEl.lastElementChild === li) {
      li.scrollIntoView({ block: "nearest" });
    }
  }

  function showPartial(message) {
    if (!shown || message.hearing !== shown.id) {
      return;
    }
    let li = partialsEl.querySelector('[data-seat="' + CSS.escape(message.seat) + '"]');
    if (!li) {
      li = el("li", "tx-line tx-partial");
      li.dataset.seat = message.seat;
      partialsEl.appendChild(li);
    }
    li.replaceChildren(
      el("time", "tx-time mono", clock(Math.floor(message.ts_us / 1000))),
      seatBadge(message.seat),
      el("span", "tx-text", message.text)
    );
    transcriptEmpty.hidden = true;
  }

  function renderNotes(notes) {
    notesEl.replaceChildren();
    const sorted = notes.slice().sort(function (a, b) { return a.ts_ms - b.ts_ms || a.id - b.id; });
    for (const n of sorted) {
      const li = el("li", "hearing-note");
      li.dataset.note = String(n.id);
      li.appendChild(el("time", "mono", clock(n.ts_ms)));
      li.appendChild(el("span", "hearing-note-text", n.text));
      li.appendChild(el("span", "muted", n.author));
      notesEl.appendChild(li);
    }
  }

  async function loadTranscript(after) {
    const h = shown;
    if (!h || !DATA.transcripts) {
      return;
    }
    const url = "/api/v1/hearings/" + encodeURIComponent(h.id) + "/transcript?after=" + encodeURIComponent(String(after));
    const result = await C.api("GET", url);
    if (!result.ok || !shown || shown.id !== h.id) {
      return;
    }
    for (const segment of result.data.segments || []) {
      addSegment(segment);
    }
    renderNotes(result.data.notes || []);
  }

  /* clerk corrections ---------------------------------------------------------------------------- */
  function startEdit(li) {
    if (readOnly || !DATA.can_revise || li.classList.contains("editing") || li.classList.contains("tx-partial")) {
      return;
    }
    const textEl = li.querySelector(".tx-text");
    const input = el("input", "tx-edit");
    input.value = textEl.textContent;
    input.setAttribute("aria-label", t("js.hearing.edit_label"));
    input.dataset.testid = "tx-edit";
    li.classList.add("editing");
    textEl.replaceWith(input);
    input.focus();
    input.select();
    let finished = false;
    async function finish(save) {
      if (finished) {
        return;
      }
      finished = true;
      const id = li.dataset.segment;
      if (save && input.value.trim() && input.value.trim() !== textEl.textContent) {
        input.disabled = true;
        const result = await C.api("POST", "/api/v1/transcript/segments/" + encodeURIComponent(id) + "/revise", { text: input.value.trim() });
        li.classList.remove("editing");
        if (result.ok) {
          fillLine(li, result.data);
          return;
        }
        showError(t("js.hearing.refused", { error: result.error }));
      }
      li.classList.remove("editing");
      input.replaceWith(textEl);
    }
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter") {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        event.preventDefault();
        finish(false);
      }
    });
    input.addEventListener("blur", function () {
      finish(false);
    });
  }

  /* a click corrects a line while the hearing goes on; once closed it seeks the playback there
   * and a double-click corrects (until sealed) */
  transcriptEl.addEventListener("click", function (event) {
    const li = event.target.closest(".tx-line");
    if (!li || event.target.closest("input")) {
      return;
    }
    if (playbackOn()) {
      seekToLine(li);
    } else {
      startEdit(li);
    }
  });
  transcriptEl.addEventListener("dblclick", function (event) {
    const li = event.target.closest(".tx-line");
    if (li && playbackOn() && !event.target.closest("input")) {
      startEdit(li);
    }
  });
  transcriptEl.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && event.target.classList && event.target.classList.contains("tx-line")) {
      startEdit(event.target);
    }
  });

  /* notes ---------------------------------------------------------------------------------------- */
  noteForm.addEventListener("submit", async function (event) {
    event.preventDefault();
    const text = noteText.value.trim();
    if (!shown || !text) {
      return;
    }
    showError("");
    const result = await C.api("POST", "/api/v1/hearings/" + encodeURIComponent(shown.id) + "/notes", {
      ts_ms: Math.round(C.now()),
      text: text,
    });
    if (!result.ok) {
      showError(t("js.hearing.refused", { error: result.error }));
      return;
    }
    noteText.value = "";
    await loadTranscript(lastId);
  });

  /* video ---------------------------------------------------------------------------------------- */
  function renderTiles() {
    const mine = (DATA.cameras || []).filter(function (c) { return c.venue === venue(); });
    const wanted = new Set(mine.map(function (c) { return c.id; }));
    for (const tile of Array.from(tilesEl.children)) {
      if (!wanted.has(tile.dataset.camera)) {
        const img = tile.querySelector("img");
        img.removeAttribute("src"); /* Chromium drops the stream */
        tile.remove();
      }
    }
    for (const camera of mine) {
      if (tilesEl.querySelector('[data-camera="' + CSS.escape(camera.id) + '"]')) {
        continue;
      }
      const figure = el("figure", "hearing-tile");
      figure.dataset.camera = camera.id;
      figure.dataset.testid = "video-tile";
      const img = el("img", "hearing-img");
      img.alt = camera.name;
      img.src = camera.live_url;
      figure.appendChild(img);
      figure.appendChild(el("figcaption", "", camera.name));
      tilesEl.appendChild(figure);
    }
    videoEmpty.hidden = mine.length > 0;
  }

  /* playback ------------------------------------------------------------------------------------ */
  /* Once the hearing is closed its recordings play back beside the transcript: one seat's audio
   * (the <audio> with controls leads) and the selected camera's video (muted, follows the audio's
   * time). Every segment is a file covering [start_ms, end_ms) in capture UTC; a time t is played
   * as the segment covering it (or the next one, across a recess) at offset t - start. */
  const playBox = document.getElementById("playback");
  const playEmpty = document.getElementById("play-empty");
  const audioEl = document.getElementById("play-audio");
  const videoEl = document.getElementById("play-video");
  const audioRow = document.getElementById("play-audio-row");
  const videoRow = document.getElementById("play-video-row");
  const seatSelect = document.getElementById("play-seat");
  const cameraSelect = document.getElementById("play-camera");
  const playClock = document.getElementById("play-clock");
  /* track id -> its segments (oldest first) */
  let audioTracks = new Map();
  let videoTracks = new Map();
  /* the hearing whose recordings are listed */
  let playFor = "";
  /* element -> the segment it plays, and the offset (s) to go to once its file is open */
  const loadedSegment = new Map();
  const wantedOffset = new Map();
  /* tolerated drift of the video behind/ahead of the audio before it is moved (s) */
  const VIDEO_DRIFT_S = 0.4;

  function playbackOn() {
    return !!shown && !!DATA.can_play && (shown.state === "closed" || shown.state === "sealed");
  }

  function leader() {
    return audioTracks.size > 0 ? audioEl : videoEl;
  }

  function players() {
    const list = [];
    if (audioTracks.size > 0) {
      list.push(audioEl);
    }
    if (videoTracks.size > 0) {
      list.push(videoEl);
    }
    return list;
  }

  function trackOf(media) {
    return media === audioEl ? audioTracks.get(seatSelect.value) : videoTracks.get(cameraSelect.value);
  }

  /* the segment playing t, else the first after t (a recess, a gap) */
  function segmentAt(segments, t) {
    return (segments || []).find(function (s) { return t < s.end_ms; }) || null;
  }

  function absoluteTime(media) {
    const segment = loadedSegment.get(media);
    return segment ? segment.start_ms + media.currentTime * 1000 : null;
  }

  function unload(media) {
    media.pause();
    loadedSegment.delete(media);
    wantedOffset.delete(media);
    media.removeAttribute("src");
    media.load();
  }

  /* put `media` at `offset` seconds into `segment`, opening its file if it is not the loaded one */
  function place(media, segment, offset) {
    if (loadedSegment.get(media) === segment) {
      if (media.readyState >= 1) {
        media.currentTime = offset;
      } else {
        wantedOffset.set(media, offset);
      }
      return;
    }
    loadedSegment.set(media, segment);
    wantedOffset.set(media, offset);
    media.src = "/api/v1/recordings/segments/" + encodeURIComponent(String(segment.id)) + "/media";
  }

  function onMetadata(event) {
    const media = event.target;
    const offset = wantedOffset.get(media);
    wantedOffset.delete(media);
    if (offset) {
      media.currentTime = offset;
    }
    if (media === leader()) {
      showPosition(absoluteTime(media));
    }
  }

  /* seek every player to capture time t (ms), keeping play or pause */
  function seekTo(t) {
    const lead = leader();
    const wasPlaying = !lead.paused && !lead.ended;
    for (const media of players()) {
      const segment = segmentAt(trackOf(media), t);
      if (segment) {
        place(media, segment, Math.max(0, (t - segment.start_ms) / 1000));
      }
    }
    if (wasPlaying) {
      for (const media of players()) {
        media.play().catch(function () {});
      }
    }
    showPosition(t);
  }

  function seatTrack(seat) {
    for (const track of audioTracks.keys()) {
      if (track === seat || track.endsWith("-" + seat)) {
        return track;
      }
    }
    return "";
  }

  /* a line: its seat's audio, at its start */
  function seekToLine(li) {
    const track = seatTrack(li.dataset.seat || "");
    if (track && seatSelect.value !== track) {
      seatSelect.value = track;
    }
    seekTo(Number(li.dataset.startUs) / 1000);
  }

  /* the lines spoken at t: highlighted (the first scrolled into view when it changes) */
  function showPosition(t) {
    playClock.textContent = t === null ? "" : C.formatTime(Math.floor(t));
    let first = null;
    for (const li of lines.values()) {
      const on = t !== null && Number(li.dataset.startUs) / 1000 <= t && t < Number(li.dataset.endUs) / 1000;
      if (on && !li.classList.contains("tx-playing") && !first) {
        first = li;
      }
      li.classList.toggle("tx-playing", on);
    }
    if (first) {
      first.scrollIntoView({ block: "nearest" });
    }
  }

  function onLeaderTime() {
    const t = absoluteTime(leader());
    showPosition(t);
    /* the video follows the audio: the covering segment, within VIDEO_DRIFT_S */
    if (t === null || leader() === videoEl || videoTracks.size === 0 || (videoEl.readyState < 1 && loadedSegment.has(videoEl))) {
      return;
    }
    const segment = segmentAt(trackOf(videoEl), t);
    if (!segment || segment.start_ms > t) {
      videoEl.pause();
      return;
    }
    const at = absoluteTime(videoEl);
    if (loadedSegment.get(videoEl) !== segment || at === null || Math.abs(at - t) > VIDEO_DRIFT_S * 1000) {
      place(videoEl, segment, (t - segment.start_ms) / 1000);
    }
    if (!audioEl.paused && videoEl.paused) {
      videoEl.play().catch(function () {});
    }
  }

  /* the leader's segment ended: on into the track's next one */
  function onLeaderEnded() {
    const current = loadedSegment.get(leader());
    const segments = trackOf(leader()) || [];
    const next = current ? segments[segments.indexOf(current) + 1] : null;
    if (!next) {
      videoEl.pause();
      return;
    }
    place(leader(), next, 0);
    leader().play().catch(function () {});
    onLeaderTime();
  }

  function fillPicker(select, tracks, name) {
    select.replaceChildren();
    for (const track of tracks.keys()) {
      select.appendChild(new Option(name(track), track));
    }
  }

  async function loadPlayback() {
    const on = playbackOn();
    playBox.hidden = !on;
    renderControls();
    if (!on) {
      if (playFor) {
        playFor = "";
        unload(audioEl);
        unload(videoEl);
        audioTracks = new Map();
        videoTracks = new Map();
        showPosition(null);
      }
      return;
    }
    const h = shown;
    if (playFor === h.id) {
      return;
    }
    playFor = h.id;
    unload(audioEl);
    unload(videoEl);
    const result = await C.api("GET", "/api/v1/recordings/segments?session=" + encodeURIComponent(h.id));
    if (!result.ok || !shown || shown.id !== h.id) {
      playFor = "";
      return;
    }
    const watchable = new Map((DATA.cameras || []).map(function (c) { return [c.id, c.name]; }));
    audioTracks = new Map();
    videoTracks = new Map();
    for (const s of result.data.segments || []) {
      const audio = s.path.toLowerCase().endsWith(".wav");
      if (!audio && !watchable.has(s.camera)) {
        continue; /* only cameras this user may watch */
      }
      const tracks = audio ? audioTracks : videoTracks;
      if (!tracks.has(s.camera)) {
        tracks.set(s.camera, []);
      }
      tracks.get(s.camera).push(s);
    }
    fillPicker(seatSelect, audioTracks, function (track) {
      return seatName(track.split("-").pop()) + " (" + track + ")";
    });
    fillPicker(cameraSelect, videoTracks, function (camera) {
      return watchable.get(camera) + " (" + camera + ")";
    });
    audioRow.hidden = audioTracks.size === 0;
    videoRow.hidden = videoTracks.size === 0;
    playEmpty.hidden = audioTracks.size + videoTracks.size > 0;
    audioEl.controls = true;
    videoEl.controls = audioTracks.size === 0;
    const all = Array.from(audioTracks.values()).concat(Array.from(videoTracks.values()));
    const first = Math.min.apply(null, all.map(function (list) { return list[0].start_ms; }));
    if (all.length > 0) {
      seekTo(first);
    }
    renderControls();
  }

  for (const media of [audioEl, videoEl]) {
    media.addEventListener("loadedmetadata", onMetadata);
    media.addEventListener("error", function () {
      if (media.getAttribute("src")) {
        showError(t("js.hearing.play_failed", { error: media.error ? media.error.message || String(media.error.code) : "" }));
      }
    });
    media.addEventListener("timeupdate", function () {
      if (media === leader()) {
        onLeaderTime();
      }
    });
    media.addEventListener("ended", function () {
      if (media === leader()) {
        onLeaderEnded();
      }
    });
    media.addEventListener("play", function () {
      if (media === audioEl && videoTracks.size > 0) {
        onLeaderTime();
      }
    });
    media.addEventListener("pause", function () {
      if (media === audioEl && !audioEl.ended) {
        videoEl.pause();
      }
    });
  }
  for (const select of [seatSelect, cameraSelect]) {
    select.addEventListener("change", function () {
      const t = absoluteTime(leader());
      seekTo(t === null ? 0 : t);
    });
  }

  /* live ----------------------------------------------------------------------------------------- */
  function onLive(message) {
    if (message.type === "subscribed") {
      /* connected (again): fetch what was said while we were away */
      transcriptEl.dataset.live = "subscribed";
      loadTranscript(lastId);
    } else if (message.type === "partial") {
      showPartial(message);
    } else if (message.type === "final" && message.segment) {
      addSegment(message.segment);
    } else if (message.type === "revision" && message.segment) {
      /* another page corrected a line: show the correction here too */
      const li = lines.get(message.segment.id);
      if (li && !li.classList.contains("editing")) {
        fillLine(li, message.segment);
      }
    }
  }

  /* start ---------------------------------------------------------------------------------------- */
  const params = new URLSearchParams(location.search);
  const wantedVenue = params.get("venue") || localStorage.getItem(STORE);
  if (wantedVenue && venueSelect.querySelector('option[value="' + CSS.escape(wantedVenue) + '"]')) {
    venueSelect.value = wantedVenue;
  }
  renderTiles();
  renderControls();
  loadHearings().then(function () {
    if (DATA.transcripts && (document.body.dataset.liveTopics || "").indexOf("transcript") >= 0) {
      C.connectLive(["transcript"], onLive);
    }
  });
  setInterval(function () {
    if (!document.hidden && !busy) {
      /* notes and finals others added (a missed live message, too) come with the poll */
      loadHearings().then(function () {
        loadTranscript(lastId);
      });
    }
  }, POLL_MS);
})();
