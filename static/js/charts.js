/* Interactive line charts over the server-drawn SVGs of {% line_chart %}
 * (platform/controlplane/dashboard/templatetags/charts.py).
 *
 * Each <figure data-chart="ID"> carries its data in <script type="application/json" id="ID">
 * (the Content-Security-Policy refuses inline script, not JSON). This file mounts a uPlot
 * chart on it: axes with ticks and labels, the values under the cursor in the legend,
 * drag to zoom (double-click resets), a log-scale toggle, TensorBoard-style smoothing, the
 * figure's full width (it follows resizes). Series that never change start hidden.
 * The SVG stays in the page for print and for browsers without JavaScript.
 *
 * Live charts: a container <div data-live-charts="URL"> is polled while its job runs; the
 * URL answers {"charts": [chart data...], "live": bool}, charts already drawn get the new
 * points (a zoomed chart keeps its zoom), new ones are added, and polling stops when
 * "live" is false.
 */
(function () {
  "use strict";

  var PLOT_HEIGHT = 260;
  var LIVE_INTERVAL_MS = 2000;
  var states = new WeakMap(); // figure -> its chart's state

  /* The decimals a tick spacing has (0.25 -> 2, 0.0002 -> 4, 5 -> 0); null when unknown or
   * too small to write out (log scales, 1e-7). */
  function tickDecimals(incr) {
    if (!(incr > 0) || !isFinite(incr)) return null;
    var text = String(Number(incr.toPrecision(6)));
    if (text.indexOf("e") !== -1) return null;
    return (text.split(".")[1] || "").length;
  }

  function fmt(value) {
    if (value === null || value === undefined || !isFinite(value)) return "—";
    var size = Math.abs(value);
    if (size === 0 || (size >= 1e-4 && size < 1e5)) return String(Number(value.toPrecision(4)));
    return value.toExponential(2);
  }

  /* TensorBoard's smoothing: an exponential moving average, debiased so the first points
   * are not pulled towards zero (the weight of the zero start is divided out). */
  function smoothed(values, weight) {
    if (!(weight > 0)) return values;
    var last = 0, count = 0;
    return values.map(function (value) {
      if (value === null) return null;
      last = last * weight + (1 - weight) * value;
      count += 1;
      return last / (1 - Math.pow(weight, count));
    });
  }

  /* uPlot wants one x array shared by every series: the union of the series' x values,
   * each series null where it has no point (spanGaps draws across). */
  function aligned(series) {
    var xs = new Set();
    series.forEach(function (s) { s.points.forEach(function (p) { xs.add(p[0]); }); });
    var x = Array.from(xs).sort(function (a, b) { return a - b; });
    var index = new Map(x.map(function (value, i) { return [value, i]; }));
    var columns = series.map(function (s) {
      var column = new Array(x.length).fill(null);
      s.points.forEach(function (p) { column[index.get(p[0])] = p[1]; });
      return column;
    });
    return { x: x, columns: columns };
  }

  function allPositive(series) {
    return series.every(function (s) {
      return s.points.every(function (p) { return p[1] > 0; });
    });
  }

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function controls(state) {
    var bar = element("div", "chart-controls");
    var logLabel = element("label");
    var log = element("input");
    log.type = "checkbox";
    logLabel.append(log, " log scale");
    log.addEventListener("change", function () { state.log = log.checked; draw(state); });
    var smoothLabel = element("label");
    var slider = element("input");
    slider.type = "range";
    slider.min = "0";
    slider.max = "0.99";
    slider.step = "0.01";
    slider.value = "0";
    var shown = element("output", "", "0");
    smoothLabel.append("smoothing ", slider, " ", shown);
    slider.addEventListener("input", function () {
      state.smoothing = Number(slider.value);
      shown.textContent = slider.value;
      draw(state);
    });
    var hint = element("span", "muted small", "drag to zoom · double-click to reset · click a legend entry to show or hide");
    bar.append(logLabel, smoothLabel, hint);
    state.logInput = log;
    return bar;
  }

  function constantNote(state) {
    var hidden = state.data.series.filter(function (s) { return s.constant; });
    state.note.textContent = hidden.length
      ? "Constant, hidden until clicked: " + hidden.map(function (s) {
          return s.label + " = " + fmt(s.points[0][1]);
        }).join(", ")
      : "";
  }

  /* uPlot's log scale snaps to whole decades (a loss from 1.9 to 3.1 drawn over 1 to 10):
   * a little margin around the data instead. */
  function logRange(u, min, max) {
    if (!(min > 0) || !(max > 0)) return [1, 10];
    return [min / 1.1, max * 1.1];
  }

  function options(state, width) {
    var data = state.data;
    var series = [{ label: data.x_label, value: function (u, v) { return fmt(v); } }];
    state.dataIndexOf = [null];
    data.series.forEach(function (s, i) {
      if (state.smoothing > 0) {
        series.push({ label: s.label + " (raw)", stroke: s.colour + "55", width: 1,
                      show: state.shown[i], spanGaps: true,
                      value: function (u, v) { return fmt(v); } });
        state.dataIndexOf.push(i);
      }
      series.push({ label: s.label, stroke: s.colour, width: 1.6, show: state.shown[i],
                    spanGaps: true, value: function (u, v) { return fmt(v); } });
      state.dataIndexOf.push(i);
    });
    // A log axis passes null for the ticks it leaves unlabelled.
    // Ticks as precise as their spacing: 5.5180, 5.5185, … rather than five "5.519"s.
    var tickValues = function (u, ticks, axisIdx, space, incr) {
      var decimals = tickDecimals(incr);
      return ticks.map(function (t) {
        if (t === null) return "";
        var size = Math.abs(t);
        if (decimals === null || decimals > 8 || size >= 1e5 || (size > 0 && size < 1e-4)) return fmt(t);
        return decimals > 0 ? t.toFixed(decimals) : String(Math.round(t));
      });
    };
    return {
      width: width,
      height: PLOT_HEIGHT,
      series: series,
      scales: { x: { time: false }, y: state.log ? { distr: 3, range: logRange } : { distr: 1 } },
      axes: [
        { label: data.x_label, values: tickValues },
        { label: data.y_label || data.title, values: tickValues, size: 64 },
      ],
      cursor: { drag: { x: true, y: false } },
      legend: { live: true },
      hooks: {
        setSeries: [function (u, index, change) {
          if (index === null || !change || change.show === undefined || state.syncing) return;
          var dataIndex = state.dataIndexOf[index];
          state.shown[dataIndex] = change.show;
          // A smoothed series and its raw shadow show and hide together.
          state.syncing = true;
          state.dataIndexOf.forEach(function (other, uIndex) {
            if (other === dataIndex && uIndex !== index) u.setSeries(uIndex, { show: change.show });
          });
          state.syncing = false;
        }],
        // Zoomed: the x scale shows less than the data's span (a drag narrows it, a
        // double-click or a reset to the data widens it again).
        setScale: [function (u, key) {
          if (key !== "x" || !u.data || !u.data[0].length) return;
          var xs = u.data[0], slack = (xs[xs.length - 1] - xs[0]) * 1e-9;
          state.zoomed = u.scales.x.min > xs[0] + slack || u.scales.x.max < xs[xs.length - 1] - slack;
        }],
      },
    };
  }

  function columns(state) {
    var lined = aligned(state.data.series);
    var out = [lined.x];
    lined.columns.forEach(function (column) {
      if (state.smoothing > 0) out.push(column);
      out.push(smoothed(column, state.smoothing));
    });
    return out;
  }

  function draw(state) {
    var range = state.plot && state.zoomed ? { min: state.plot.scales.x.min, max: state.plot.scales.x.max } : null;
    if (state.plot) state.plot.destroy();
    var width = Math.max(state.holder.clientWidth, 200);
    state.plot = new window.uPlot(options(state, width), columns(state), state.holder);
    if (range) state.plot.setScale("x", range);
    counted(state);
  }

  /* How many points the chart holds, on the figure (what a browser test watches grow). */
  function counted(state) {
    state.figure.dataset.points = state.data.series.reduce(function (sum, s) {
      return sum + s.points.length;
    }, 0);
  }

  /* New points for a drawn chart: the same series keep their shown/hidden state. */
  function update(state, data) {
    var sameSeries = data.series.length === state.data.series.length &&
      data.series.every(function (s, i) { return s.label === state.data.series[i].label; });
    state.data = data;
    if (!sameSeries) {
      state.shown = data.series.map(function (s) { return !s.constant; });
    }
    state.logInput.disabled = !allPositive(data.series);
    if (state.logInput.disabled && state.log) { state.log = false; state.logInput.checked = false; }
    constantNote(state);
    if (!state.plot) {
      // Flat lines only so far (flatOnly): drawn once one of them moves.
      if (data.series.every(function (s) { return s.constant; })) { flatOnly(state); return; }
      state.holder.hidden = false;
      state.figure.classList.remove("chart-flat");
      state.shown = data.series.map(function (s) { return !s.constant; });
      draw(state);
      return;
    }
    if (!sameSeries) { draw(state); return; }
    state.plot.setData(columns(state), !state.zoomed);
    counted(state);
  }

  function mount(figure, data) {
    if (states.has(figure) || !window.uPlot) return;
    if (!data) {
      var block = document.getElementById(figure.dataset.chart);
      if (!block) return;
      data = JSON.parse(block.textContent);
    }
    var state = {
      figure: figure, data: data, log: false, smoothing: 0, zoomed: false, plot: null,
      shown: data.series.map(function (s) { return !s.constant; }),
    };
    states.set(figure, state);
    state.holder = element("div", "chart-plot");
    state.note = element("p", "chart-note muted small");
    var caption = figure.querySelector("figcaption");
    var bar = controls(state);
    if (caption) caption.after(bar); else figure.prepend(bar);
    bar.after(state.holder);
    state.holder.after(state.note);
    state.logInput.disabled = !allPositive(data.series);
    state.logInput.title = "a log scale needs every value above zero";
    constantNote(state);
    figure.classList.add("chart-mounted");
    if (data.series.every(function (s) { return s.constant; })) {
      // Nothing but flat lines: the note says their values; the plot is drawn on request
      // rather than left as an empty frame.
      flatOnly(state);
    } else {
      draw(state);
    }
    if (window.ResizeObserver) {
      var lastWidth = state.holder.clientWidth;
      new ResizeObserver(function () {
        var width = state.holder.clientWidth;
        if (width > 0 && width !== lastWidth && state.plot) {
          lastWidth = width;
          state.plot.setSize({ width: width, height: PLOT_HEIGHT });
        }
      }).observe(state.holder);
    }
  }

  function flatOnly(state) {
    state.holder.hidden = true;
    state.figure.classList.add("chart-flat");
    var button = element("button", "link-button", "Draw it");
    button.type = "button";
    button.addEventListener("click", function () {
      button.remove();
      state.holder.hidden = false;
      state.figure.classList.remove("chart-flat");
      state.shown = state.data.series.map(function () { return true; });
      draw(state);
    });
    state.note.append(" ", button);
  }

  function newFigure(container, data) {
    var figure = element("figure", "chart");
    figure.dataset.title = data.title;
    figure.append(element("figcaption", "chart-title", data.title));
    var placeholder = container.querySelector("[data-charts-placeholder]");
    if (placeholder) placeholder.remove();
    container.append(figure);
    mount(figure, data);
  }

  function poll(container) {
    if (container.dataset.polling) return;
    container.dataset.polling = "1";
    var tick = function () {
      if (!document.body.contains(container)) return; // swapped away: stop
      if (document.hidden) { setTimeout(tick, LIVE_INTERVAL_MS); return; }
      fetch(container.dataset.liveCharts, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (body) {
          if (!body) { setTimeout(tick, LIVE_INTERVAL_MS * 2); return; }
          body.charts.forEach(function (data) {
            var figure = Array.from(container.querySelectorAll("figure.chart")).find(function (f) {
              return f.dataset.title === data.title;
            });
            if (figure && states.has(figure)) update(states.get(figure), data);
            else if (!figure) newFigure(container, data);
          });
          if (body.live) setTimeout(tick, LIVE_INTERVAL_MS);
        })
        .catch(function () { setTimeout(tick, LIVE_INTERVAL_MS * 2); });
    };
    setTimeout(tick, LIVE_INTERVAL_MS);
  }

  function mountAll(root) {
    root.querySelectorAll("figure[data-chart]").forEach(function (figure) { mount(figure); });
    root.querySelectorAll("[data-live-charts]").forEach(poll);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { mountAll(document); });
  } else {
    mountAll(document);
  }
  // The pure parts, for tests/platform/dashboard/test_charts_js.py (run under node).
  window.controlplaneCharts = { smoothed: smoothed, aligned: aligned, fmt: fmt, tickDecimals: tickDecimals };
  // Content htmx swaps in (a compare page's new selection, a polled fragment).
  document.addEventListener("htmx:load", function (event) { mountAll(event.detail.elt); });
})();
