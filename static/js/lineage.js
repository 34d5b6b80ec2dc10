// Pan and zoom for the lineage graphs (datasets/templatetags/lineage_graph.py).
// The server draws the whole graph with a viewBox that fits its box; this script moves and
// scales that viewBox: the + / − / Fit buttons, dragging, Ctrl+wheel (or the wheel once the
// graph has focus), and the keyboard (arrows pan, + and - zoom, 0 fits). A node that gets
// keyboard focus outside the view is brought into it. Loaded once per graph tag: each
// graph is set up once.
(function () {
  "use strict";
  const STEP = 1.25;       // one zoom step
  const MAX_PIXELS = 2;    // zoom in at most to two screen pixels per unit (twice natural size)
  const PAN = 0.15;        // an arrow key moves this share of the view
  const DRAG_SLOP = 4;     // pixels a press moves before it is a drag, not a click

  function setUp(view) {
    if (view.dataset.lineageReady) return;
    view.dataset.lineageReady = "1";
    const svg = view.querySelector("svg.lineage");
    const controls = view.querySelector(".lineage-controls");
    const scaleLabel = view.querySelector("[data-lineage-scale]");
    const whole = svg.viewBox.baseVal;
    const full = {x: whole.x, y: whole.y, w: whole.width, h: whole.height};
    let box = Object.assign({}, full);

    function show() {
      svg.setAttribute("viewBox", [box.x, box.y, box.w, box.h].join(" "));
      // The text's size against its natural size (what "100%" means to a reader).
      const rect = svg.getBoundingClientRect();
      const pixels = Math.min(rect.width / box.w, rect.height / box.h);
      scaleLabel.textContent = Math.round(pixels * 100) + "%";
    }

    function clampPan() {
      // Keep some of the graph in view: never pan it wholly out of its box.
      box.x = Math.min(Math.max(box.x, full.x - box.w * 0.8), full.x + full.w - box.w * 0.2);
      box.y = Math.min(Math.max(box.y, full.y - box.h * 0.8), full.y + full.h - box.h * 0.2);
    }

    // Zoom by `factor` (>1: in) keeping the graph point (cx, cy) where it is on screen.
    function zoom(factor, cx, cy) {
      const narrowest = Math.min(full.w, svg.getBoundingClientRect().width / MAX_PIXELS);
      const w = Math.min(full.w, Math.max(narrowest, box.w / factor));
      const h = w * (full.h / full.w);
      if (cx === undefined) { cx = box.x + box.w / 2; cy = box.y + box.h / 2; }
      box = {x: cx - (cx - box.x) * (w / box.w), y: cy - (cy - box.y) * (h / box.h), w: w, h: h};
      if (w >= full.w) box = Object.assign({}, full);
      clampPan();
      show();
    }

    function fit() { box = Object.assign({}, full); show(); }

    function pan(dx, dy) { box.x += dx; box.y += dy; clampPan(); show(); }

    // The graph point under a pointer event (the viewBox is scaled to the element).
    function pointAt(event) {
      const rect = svg.getBoundingClientRect();
      const scale = Math.max(box.w / rect.width, box.h / rect.height);
      return {
        x: box.x + (event.clientX - rect.left - (rect.width - box.w / scale) / 2) * scale,
        y: box.y + (event.clientY - rect.top - (rect.height - box.h / scale) / 2) * scale,
        scale: scale,
      };
    }

    controls.hidden = false;
    controls.addEventListener("click", function (event) {
      const button = event.target.closest("[data-lineage-zoom]");
      if (!button) return;
      const action = button.dataset.lineageZoom;
      if (action === "in") zoom(STEP);
      else if (action === "out") zoom(1 / STEP);
      else fit();
    });

    svg.addEventListener("wheel", function (event) {
      // The page scrolls as usual until the graph is chosen (focused) or Ctrl is held.
      if (!event.ctrlKey && !event.metaKey && document.activeElement !== svg &&
          !svg.contains(document.activeElement)) return;
      event.preventDefault();
      const point = pointAt(event);
      zoom(event.deltaY < 0 ? STEP : 1 / STEP, point.x, point.y);
    }, {passive: false});

    let drag = null;
    let dragged = false;
    svg.addEventListener("pointerdown", function (event) {
      if (event.button !== 0) return;
      drag = {x: event.clientX, y: event.clientY, box: Object.assign({}, box), id: event.pointerId};
      dragged = false;
    });
    svg.addEventListener("pointermove", function (event) {
      if (!drag || event.pointerId !== drag.id) return;
      const dx = event.clientX - drag.x;
      const dy = event.clientY - drag.y;
      if (!dragged && Math.hypot(dx, dy) < DRAG_SLOP) return;
      if (!dragged) { dragged = true; svg.setPointerCapture(event.pointerId); svg.classList.add("dragging"); }
      const scale = pointAt(event).scale;
      box.x = drag.box.x - dx * scale;
      box.y = drag.box.y - dy * scale;
      clampPan();
      show();
    });
    function endDrag() { drag = null; svg.classList.remove("dragging"); }
    svg.addEventListener("pointerup", endDrag);
    svg.addEventListener("pointercancel", endDrag);
    // A drag that ends on a node is not a click on its link.
    svg.addEventListener("click", function (event) {
      if (dragged) { event.preventDefault(); dragged = false; }
    }, true);

    svg.addEventListener("keydown", function (event) {
      const handled = {
        ArrowLeft: function () { pan(-box.w * PAN, 0); },
        ArrowRight: function () { pan(box.w * PAN, 0); },
        ArrowUp: function () { pan(0, -box.h * PAN); },
        ArrowDown: function () { pan(0, box.h * PAN); },
        "+": function () { zoom(STEP); },
        "=": function () { zoom(STEP); },
        "-": function () { zoom(1 / STEP); },
        "0": fit,
      }[event.key];
      if (!handled) return;
      event.preventDefault();
      handled();
    });

    // Tabbing to a node outside the view centres it.
    svg.addEventListener("focusin", function (event) {
      const node = event.target.closest("a.node");
      if (!node) return;
      const r = node.querySelector("rect").getBBox();
      if (r.x >= box.x && r.y >= box.y && r.x + r.width <= box.x + box.w &&
          r.y + r.height <= box.y + box.h) return;
      box.x = r.x + r.width / 2 - box.w / 2;
      box.y = r.y + r.height / 2 - box.h / 2;
      clampPan();
      show();
    });

    show();
  }

  function setUpAll() { document.querySelectorAll("[data-lineage]").forEach(setUp); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setUpAll);
  else setUpAll();
  document.addEventListener("htmx:afterSettle", setUpAll);
})();
