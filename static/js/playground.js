// The serving pages: the Copy buttons (base URLs, the client snippet), and a deployment's
// playground.
// Text: POST the form, read the answer as server-sent events with fetch + ReadableStream
// (EventSource cannot POST), append each chunk's text as it arrives. Images: POST, show
// the PNGs as data: URLs (the CSP's img-src allows data:). Errors show the JSON error
// shape's message; guardrail decisions show under the answer.
(function () {
  "use strict";

  // Delegated: htmx replaces the deployments list's rows (and their buttons) as it polls.
  document.addEventListener("click", (event) => {
    const button = event.target.closest && event.target.closest("button[data-copy]");
    if (!button) return;
    const source = document.getElementById(button.dataset.copy);
    if (!source || !navigator.clipboard) return;
    navigator.clipboard.writeText(source.textContent.trim()).then(() => {
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    });
  });

  const form = document.getElementById("playground-form");
  if (!form) return;
  const output = document.getElementById("playground-output");
  const images = document.getElementById("playground-images");
  const errorBox = document.getElementById("playground-error");
  const guardBox = document.getElementById("playground-guardrails");
  const requestBox = document.getElementById("playground-request");
  const submit = document.getElementById("playground-submit");

  function show(element, text) {
    element.textContent = text;
    element.hidden = !text;
  }

  function showError(body, fallback) {
    const error = body && body.error;
    let text = error && error.message ? error.message : fallback;
    if (error && error.fields) {
      const fields = Object.entries(error.fields).map(([k, v]) => `${k}: ${[].concat(v).join(" ")}`);
      if (fields.length && !text.includes(fields[0])) text += ` (${fields.join("; ")})`;
    }
    show(errorBox, text);
  }

  function showRequest(id) {
    requestBox.textContent = "";
    if (!id) { requestBox.hidden = true; return; }
    const link = document.createElement("a");
    link.href = `${form.dataset.requests}${encodeURIComponent(id)}/`;
    link.textContent = id;
    requestBox.append("Archived as request ", link);
    requestBox.hidden = false;
  }

  function describe(side, decision) {
    if (!decision) return "";
    const pii = decision.pii && Object.keys(decision.pii).length
      ? Object.entries(decision.pii).map(([k, n]) => `${k} ${n}`).join(", ") : "none";
    const toxicity = typeof decision.toxicity === "number" ? decision.toxicity.toFixed(3) : "—";
    return `${side}: PII ${pii} (${decision.pii_action || "none"}); toxicity ${toxicity} (${decision.toxicity_action || "none"})`;
  }

  function showGuardrails(decisions) {
    if (!decisions) { show(guardBox, ""); return; }
    const parts = [describe("input", decisions.input), describe("output", decisions.output)];
    show(guardBox, "Guardrails: " + parts.filter(Boolean).join(". "));
  }

  function chunkText(chunk) {
    const choice = chunk && chunk.choices && chunk.choices[0];
    if (!choice) return "";
    if (typeof choice.text === "string") return choice.text;
    return (choice.delta && choice.delta.content) || "";
  }

  // One server-sent event ("event: x\ndata: ...") -> what it means for the page.
  function handle(block) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (!data.length) return;
    let body;
    try { body = JSON.parse(data.join("\n")); } catch (e) { return; }
    if (name === "message") output.textContent += chunkText(body);
    else if (name === "request") showRequest(body.request_id);
    else if (name === "guardrails") showGuardrails(body);
    else if (name === "error") showError(body, "the answer broke off");
  }

  async function readStream(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        handle(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
    if (buffer.trim()) handle(buffer);
  }

  function showImages(body) {
    images.textContent = "";
    for (const b64 of body.images || []) {
      const img = document.createElement("img");
      img.src = `data:image/png;base64,${b64}`;
      img.alt = "generated image";
      img.width = 128;
      img.style.imageRendering = "pixelated";
      img.style.marginRight = "0.5rem";
      images.append(img);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    show(errorBox, "");
    showGuardrails(null);
    showRequest("");
    if (output) output.textContent = "";
    if (images) images.textContent = "";
    submit.disabled = true;
    form.classList.add("htmx-request");
    try {
      const response = await fetch(form.action, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": form.querySelector("[name=csrfmiddlewaretoken]").value },
        body: new FormData(form),
      });
      const type = response.headers.get("Content-Type") || "";
      if (type.startsWith("text/event-stream")) {
        await readStream(response);
      } else if (type.startsWith("application/json")) {
        const body = await response.json();
        if (!response.ok) showError(body, response.statusText);
        else { showImages(body); showRequest(body.request_id); showGuardrails(body.x_guardrails); }
      } else {
        show(errorBox, `${response.status} ${response.statusText}`);
      }
    } catch (error) {
      show(errorBox, `The request failed: ${error.message}`);
    } finally {
      submit.disabled = false;
      form.classList.remove("htmx-request");
    }
  });
})();
