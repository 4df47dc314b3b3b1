// Outpost console: live updates over Server-Sent Events. No framework, no inline script
// (the pages' Content-Security-Policy allows only this file).
"use strict";

// The fleet table: whole bodies when the rows on the page change, single rows otherwise.
function liveFleet(table) {
  const source = new EventSource(table.dataset.live);
  source.addEventListener("rows", (event) => {
    const data = JSON.parse(event.data);
    document.getElementById("fleet-rows").innerHTML = data.html;
    const summary = document.getElementById("fleet-summary");
    if (summary) summary.textContent = data.summary;
  });
  source.addEventListener("row", (event) => {
    const data = JSON.parse(event.data);
    const row = document.getElementById(data.id);
    if (row) row.outerHTML = data.html;
  });
}

// Brings the part of the page that shows a status up to date (at most every 250 ms).
function refresher(url, id) {
  let pending = null;
  return () => {
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) return;
      const part = document.getElementById(id);
      if (part) {
        part.outerHTML = await response.text();
        hookDanger(document.getElementById(id) || document);
      }
    }, 250);
  };
}

// An output pane: the retained tail, then each entry as it arrives, as text. A status entry
// (`event`) also refreshes the agent's status and actions.
function liveOutput(pane) {
  const source = new EventSource(pane.dataset.events);
  const refresh = pane.dataset.live ? refresher(pane.dataset.live, "agent-live") : () => {};
  let lines = 0;
  const maxLines = 5000;
  source.onmessage = (event) => {
    let entry;
    try {
      entry = JSON.parse(event.data);
    } catch (_) {
      return;
    }
    const line = document.createElement("span");
    line.className = "line " + (entry.stream || "stdout");
    let text = entry.data || "";
    if (!text.endsWith("\n")) text += "\n";
    line.textContent = entry.stream === "event" ? "· " + text : text;
    pane.appendChild(line);
    lines += 1;
    if (lines > maxLines && pane.firstChild) {
      pane.removeChild(pane.firstChild);
      lines -= 1;
    }
    pane.scrollTop = pane.scrollHeight;
    pane.dataset.entries = String(entry.seq);
    if (entry.stream === "event") refresh();
  };
}

// Asks before a form marked dangerous (delete) is posted.
function confirmDanger(form) {
  form.addEventListener("submit", (event) => {
    if (form.dataset.confirmed === "yes") return;
    if (!window.confirm("This cannot be undone. Go on?")) event.preventDefault();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const fleet = document.querySelector("table[data-live]");
  if (fleet) liveFleet(fleet);
  document.querySelectorAll("pre[data-events]").forEach(liveOutput);
  hookDanger(document);
});

function hookDanger(root) {
  root.querySelectorAll("button.danger").forEach((b) => b.form && confirmDanger(b.form));
}
