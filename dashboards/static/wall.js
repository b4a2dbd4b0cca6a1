/* courthub video wall: live camera pictures of every venue (MJPEG <img> streams).
 *
 * The tiles are built from the page's JSON (<script id="wall-data">) and kept current by polling
 * GET /api/v1/cameras every 2 s (state, recording, newest frame). Each second the "last frame"
 * age ticks on the client. A tile whose camera is online shows /video/<id>/live.mjpg; a camera
 * that is down shows its last still, greyed, with "offline since <court time>".
 *
 * Bandwidth: a stream runs only for a tile that is on screen — tiles scrolled out of view, all
 * tiles while the browser tab is hidden, and the small tiles while one picture is enlarged show
 * stills (refreshed with each poll) instead; setting another src makes Chromium drop the stream.
 * Click (or Enter) enlarges a tile; Esc, the back button or another click returns to the grid.
 */
(function () {
  "use strict";

  const C = window.Courthub;
  const t = C.t;
  const POLL_MS = 2000;
  const grid = document.getElementById("wall-grid");
  const stage = document.getElementById("wall-stage");
  const wall = document.getElementById("wall");
  const template = document.getElementById("wall-tile-template");
  const dataEl = document.getElementById("wall-data");
  if (!grid || !stage || !wall || !template || !dataEl) {
    return;
  }
  const back = document.getElementById("wall-back");
  const errorEl = document.getElementById("wall-error");
  const emptyEl = document.getElementById("wall-empty");
  const countEl = document.getElementById("wall-count");

  /* id -> {el, img, camera, visible, mode, stillSeq} */
  const tiles = new Map();
  let order = [];
  let focused = null;
  /* server clock minus browser clock, from each poll */
  let offset = 0;

  const observer = "IntersectionObserver" in window
    ? new IntersectionObserver(onIntersect, { threshold: 0.01 })
    : null;

  function isLive(camera) {
    return camera.state === "online" || camera.state === "starting";
  }

  function stateLabel(camera) {
    if (camera.state === "starting") {
      return t("js.wall.state_starting");
    }
    return t("state." + camera.state);
  }

  function venueLabel(camera) {
    const kind = t("venue." + camera.venue_kind);
    return camera.venue && camera.venue !== kind ? camera.venue + " · " + kind : kind;
  }

  /* what the tile's picture should be now: "live", "still" or "none" */
  function wantedMode(tile) {
    const camera = tile.camera;
    const small = focused !== null && focused !== camera.id;
    const onScreen = tile.visible && !document.hidden;
    if (isLive(camera) && onScreen && !small) {
      return "live";
    }
    return camera.has_still ? "still" : "none";
  }

  function applyPicture(tile) {
    const mode = wantedMode(tile);
    const camera = tile.camera;
    if (mode === "live") {
      if (tile.mode !== "live") {
        tile.img.src = camera.live_url;
      }
    } else if (mode === "still") {
      /* a new still only when the camera has a newer frame (the URL changes with the seq) */
      if (tile.mode !== "still" || tile.stillSeq !== camera.seq) {
        tile.img.src = camera.still_url + "?seq=" + encodeURIComponent(String(camera.seq));
        tile.stillSeq = camera.seq;
      }
    } else if (tile.mode !== "none") {
      tile.img.removeAttribute("src");
    }
    tile.mode = mode;
    tile.el.dataset.picture = mode;
    tile.img.hidden = mode === "none";
    tile.el.querySelector(".wall-nopic").hidden = mode !== "none";
  }

  function renderAge(tile) {
    const camera = tile.camera;
    const age = tile.el.querySelector(".wall-age");
    if (!camera.last_frame_ms) {
      age.textContent = t("js.wall.no_picture");
      tile.el.dataset.ageS = "";
      return;
    }
    const seconds = Math.max(0, Math.floor((Date.now() + offset - camera.last_frame_ms) / 1000));
    tile.el.dataset.ageS = String(seconds);
    age.textContent = t("js.wall.last_frame", { age: t("age.seconds", { n: seconds }) });
    if (seconds >= 60) {
      age.textContent = t("js.wall.last_frame", { age: C.age(camera.last_frame_ms) });
    }
  }

  function render(tile) {
    const camera = tile.camera;
    const el = tile.el;
    el.dataset.camera = camera.id;
    el.dataset.state = camera.state;
    el.dataset.venueKind = camera.venue_kind;
    el.dataset.seq = camera.seq === null ? "" : String(camera.seq);
    el.classList.toggle("down", !isLive(camera));
    el.classList.toggle("recording", !!camera.recording);
    el.querySelector(".wall-name").textContent = camera.name;
    el.querySelector(".wall-venue").textContent = venueLabel(camera);
    const badge = el.querySelector(".wall-badge");
    badge.textContent = stateLabel(camera);
    badge.dataset.state = camera.state;
    el.querySelector(".wall-rec").hidden = !camera.recording;
    el.querySelector(".wall-seq").textContent =
      camera.seq === null ? "" : t("js.wall.frame", { seq: camera.seq });
    const offline = el.querySelector(".wall-offline");
    if (isLive(camera)) {
      offline.hidden = true;
      offline.textContent = "";
    } else {
      offline.hidden = false;
      offline.textContent = camera.offline_since_ms
        ? t("js.wall.offline_since", { time: C.formatTime(camera.offline_since_ms) })
        : stateLabel(camera);
    }
    tile.img.alt = camera.name;
    renderAge(tile);
    applyPicture(tile);
  }

  function makeTile(camera) {
    const el = template.content.firstElementChild.cloneNode(true);
    const img = el.querySelector(".wall-img");
    const tile = { el: el, img: img, camera: camera, visible: true, mode: "", stillSeq: null };
    el.addEventListener("click", function () {
      toggleFocus(camera.id);
    });
    el.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        toggleFocus(camera.id);
      }
    });
    img.addEventListener("error", function () {
      /* a stream that broke (camera removed, hub restarting): fall back until the next poll */
      if (tile.mode === "live") {
        tile.mode = "broken";
      }
    });
    if (observer) {
      observer.observe(el);
    }
    return tile;
  }

  function onIntersect(entries) {
    for (const entry of entries) {
      const id = entry.target.dataset.camera;
      const tile = tiles.get(id);
      if (tile) {
        tile.visible = entry.isIntersecting;
        applyPicture(tile);
      }
    }
  }

  function update(cameras) {
    const seen = new Set();
    order = [];
    for (const camera of cameras) {
      seen.add(camera.id);
      order.push(camera.id);
      let tile = tiles.get(camera.id);
      if (!tile) {
        tile = makeTile(camera);
        tiles.set(camera.id, tile);
      }
      tile.camera = camera;
      if (tile.mode === "broken") {
        tile.mode = "";
      }
    }
    for (const [id, tile] of tiles) {
      if (!seen.has(id)) {
        if (observer) {
          observer.unobserve(tile.el);
        }
        tile.img.removeAttribute("src");
        tile.el.remove();
        tiles.delete(id);
      }
    }
    if (focused !== null && !tiles.has(focused)) {
      focused = null;
    }
    layout();
    if (countEl) {
      countEl.textContent = String(cameras.length);
    }
    if (emptyEl) {
      emptyEl.hidden = cameras.length > 0;
    }
  }

  /* put the tiles where they belong: all in the grid, or the focused one on the stage */
  function layout() {
    let index = 0;
    for (const id of order) {
      const tile = tiles.get(id);
      if (id === focused) {
        if (tile.el.parentNode !== stage) {
          stage.appendChild(tile.el);
        }
      } else {
        /* the server's order; a tile already in place is not touched (its stream goes on) */
        const here = grid.children[index] || null;
        if (here !== tile.el) {
          grid.insertBefore(tile.el, here);
        }
        index += 1;
      }
      tile.el.classList.toggle("big", id === focused);
      tile.el.setAttribute("aria-expanded", id === focused ? "true" : "false");
    }
    wall.classList.toggle("focus", focused !== null);
    stage.hidden = focused === null;
    if (back) {
      back.hidden = focused === null;
    }
    for (const tile of tiles.values()) {
      render(tile);
    }
  }

  function toggleFocus(id) {
    focused = focused === id ? null : id;
    layout();
  }

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && focused !== null) {
      focused = null;
      layout();
    }
  });
  if (back) {
    back.addEventListener("click", function () {
      focused = null;
      layout();
    });
  }
  document.addEventListener("visibilitychange", function () {
    for (const tile of tiles.values()) {
      applyPicture(tile);
    }
  });

  async function poll() {
    const answer = await C.api("GET", "/api/v1/cameras");
    if (answer.ok && answer.data) {
      offset = answer.data.server_ms - Date.now();
      errorEl.hidden = true;
      update(answer.data.cameras);
    } else {
      errorEl.textContent = t("js.wall.poll_failed", { error: answer.error });
      errorEl.hidden = false;
    }
  }

  function schedule() {
    window.setTimeout(async function () {
      try {
        await poll();
      } finally {
        schedule();
      }
    }, POLL_MS);
  }

  const initial = JSON.parse(dataEl.textContent || "{}");
  offset = (initial.server_ms || Date.now()) - Date.now();
  update(initial.cameras || []);
  window.setInterval(function () {
    for (const tile of tiles.values()) {
      renderAge(tile);
    }
  }, 1000);
  schedule();
})();
