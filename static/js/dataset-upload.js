// Upload a dataset version from the browser, the way an API client does it:
// declare the files (name, size, sha256) -> PUT each part to its presigned URL -> complete.
// Parts are sliced from the File object, so the page never holds a whole file either.
(function () {
  "use strict";
  const form = document.getElementById("dataset-upload");
  if (!form) return;
  const bar = form.querySelector("progress");
  const status = form.querySelector(".upload-status");
  const csrf = JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRFToken"];

  async function api(url, method, body) {
    const response = await fetch(url, {
      method, credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": csrf},
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) {
      const error = new Error(data && data.error ? data.error.message : response.statusText);
      error.status = response.status;
      error.body = data && data.error;
      throw error;
    }
    return data;
  }

  // A policy's refusal (409 policy_denied) as the banner templates/policies/_denied.html
  // draws: each rule's number and title, the reason, the fix and a link to the rule.
  const deniedBox = document.querySelector(".upload-denied");
  function showDenied(error) {
    if (!deniedBox || !error.body || error.body.code !== "policy_denied") return false;
    const add = (parent, tag, text, cls) => {
      const node = document.createElement(tag);
      if (text) node.textContent = text;
      if (cls) node.className = cls;
      parent.appendChild(node);
      return node;
    };
    deniedBox.replaceChildren();
    deniedBox.className = "upload-denied flash error policy-denied";
    deniedBox.setAttribute("role", "alert");
    add(deniedBox, "strong", `Refused by the ${error.body.policy} policy`);
    const list = add(deniedBox, "ul");
    for (const d of error.body.denials || []) {
      const item = add(list, "li", "", `rule-${d.rule}`);
      add(item, "strong", `Rule ${d.rule_number}: ${d.title}`);
      item.append(`: ${d.reason}.`);
      add(item, "br");
      add(item, "em", "How to fix:");
      item.append(` ${d.fix}.`);
      add(item, "br");
      const more = add(item, "span", d.explanation, "muted small");
      if (d.rule_url) {
        more.append(" ");
        const link = add(more, "a", `Read rule ${d.rule_number} of the policy`);
        link.href = d.rule_url;
      }
    }
    deniedBox.hidden = false;
    return true;
  }

  const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // `complete` is idempotent: the same request again answers the same 200, so a lost
  // answer (network error, 5xx) is retried; a 409 while another request assembles the
  // version means waiting for it to become ready. Never abort a version on these.
  async function complete(versionUrl, body) {
    for (let attempt = 1; ; attempt++) {
      try {
        return await api(`${versionUrl}complete/`, "POST", body);
      } catch (error) {
        const retryable = error.status === undefined || error.status >= 500;
        if (error.status === 409) {
          const current = await api(versionUrl, "GET").catch(() => null);
          if (current && current.state === "ready") return current;
          if (current && current.state === "assembling" && attempt < 60) { await pause(2000); continue; }
        }
        if (!retryable || attempt >= 4) throw error;
        await pause(1000 * attempt);
      }
    }
  }

  async function sha256Hex(file) {
    // WebCrypto has no incremental digest, so the page reads each file once to hash it
    // (the upload itself is sliced). Files of several GB are better sent with the API.
    const buffer = await file.arrayBuffer();
    const digest = await crypto.subtle.digest("SHA-256", buffer);
    return Array.from(new Uint8Array(digest)).map((b) => b.toString(16).padStart(2, "0")).join("");
  }

  function putPart(url, blob, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("PUT", url);
      xhr.upload.onprogress = (event) => onProgress(event.loaded);
      xhr.onload = () => (xhr.status === 200
        ? resolve(xhr.getResponseHeader("ETag"))
        : reject(new Error(`part upload answered ${xhr.status}: ${xhr.responseText}`)));
      xhr.onerror = () => reject(new Error("network error while uploading a part"));
      xhr.send(blob);
    });
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const files = Array.from(form.elements.files.files);
    const total = files.reduce((sum, f) => sum + f.size, 0);
    bar.hidden = false; bar.max = total; bar.value = 0;
    let version = null;
    try {
      status.textContent = "computing checksums…";
      const declared = [];
      // NFC: the server refuses names whose letters are decomposed (as macOS may send them).
      for (const f of files) declared.push({name: f.name.normalize("NFC"), size: f.size, sha256: await sha256Hex(f)});
      version = await api(form.dataset.api, "POST", {files: declared, note: form.elements.note.value});
      let sent = 0;
      const completed = [];
      for (const [index, upload] of version.uploads.entries()) {
        const file = files[index];
        const parts = [];
        for (const part of upload.parts) {
          const start = (part.part_number - 1) * upload.part_size;
          const blob = file.slice(start, start + upload.part_size);
          status.textContent = `uploading ${file.name}, part ${part.part_number} of ${upload.parts.length}`;
          const etag = await putPart(part.url, blob, (loaded) => { bar.value = sent + loaded; });
          sent += blob.size;
          parts.push({part_number: part.part_number, etag: etag.replaceAll('"', "")});
        }
        completed.push({file_id: upload.file_id, parts});
      }
      status.textContent = "verifying…";
      await complete(`${form.dataset.api}${version.number}/`, {files: completed});
      window.location = form.dataset.done;
    } catch (error) {
      status.textContent = showDenied(error)
        ? "Upload refused by the policy (see above)."
        : `Upload failed: ${error.message}`;
      // Only an upload still in progress can be aborted; the server refuses (409) to
      // touch a version that is being completed or is ready.
      if (version && version.state === "uploading") {
        api(`${form.dataset.api}${version.number}/`, "DELETE").catch(() => {});
      }
    }
  });
})();
