// r2n2 voxel viewer: inlined into the HTML pages written by r2n2/viewer.py. No libraries, no network.
// Reads the JSON in <script id="r2n2-data">: rows of {title, images, gt, pred, iou, threshold, occupied},
// grids as {r, bits} (base64 of numpy packbits, index (x*r + y)*r + z, y up), and paints every
// grid's exposed voxel faces on a 2D canvas, back to front, with flat shading (orthographic view).
(function () {
  "use strict";
  const SIZE = 240;
  const COLOURS = { gt: [80, 125, 200], pred: [232, 138, 48] };
  const LIGHT = normalise([-0.35, 0.7, 0.75]);  // in view space: from the upper left, towards the viewer
  const START = { yaw: -0.6, pitch: 0.45, zoom: 1 };
  const view = Object.assign({}, START);
  const DIRS = [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]];
  const CORNERS = DIRS.map(faceCorners);
  const panels = [];

  function normalise(v) {
    const n = Math.hypot(v[0], v[1], v[2]);
    return [v[0] / n, v[1] / n, v[2] / n];
  }

  // the 4 corners of the unit voxel's face with normal n, relative to the voxel centre, in order
  function faceCorners(n) {
    const a = n[0] ? [0, 1, 0] : [1, 0, 0];
    const b = n[2] ? [0, 1, 0] : [0, 0, 1];
    return [[-1, -1], [1, -1], [1, 1], [-1, 1]].map(([s, t]) =>
      [0, 1, 2].map((k) => 0.5 * (n[k] + s * a[k] + t * b[k])));
  }

  function decode(grid) {
    const bin = atob(grid.bits);
    const r = grid.r;
    const occ = new Uint8Array(r * r * r);
    for (let i = 0; i < occ.length; i++) occ[i] = (bin.charCodeAt(i >> 3) >> (7 - (i & 7))) & 1;
    return { r: r, occ: occ };
  }

  // faces of occupied voxels whose neighbour in that direction is empty or outside the grid
  function exposedFaces(grid) {
    const r = grid.r, occ = grid.occ, faces = [];
    const at = (x, y, z) => x >= 0 && y >= 0 && z >= 0 && x < r && y < r && z < r && occ[(x * r + y) * r + z];
    for (let x = 0; x < r; x++) for (let y = 0; y < r; y++) for (let z = 0; z < r; z++) {
      if (!occ[(x * r + y) * r + z]) continue;
      for (let d = 0; d < 6; d++) {
        const n = DIRS[d];
        if (!at(x + n[0], y + n[1], z + n[2])) faces.push([x + 0.5 - r / 2, y + 0.5 - r / 2, z + 0.5 - r / 2, d]);
      }
    }
    return faces;
  }

  function rotate(p) {  // yaw about y, then pitch about x; the camera looks down -z
    const cy = Math.cos(view.yaw), sy = Math.sin(view.yaw), cp = Math.cos(view.pitch), sp = Math.sin(view.pitch);
    const x = cy * p[0] + sy * p[2], z = -sy * p[0] + cy * p[2];
    return [x, cp * p[1] - sp * z, sp * p[1] + cp * z];
  }

  function paint(panel) {
    const ctx = panel.canvas.getContext("2d");
    const w = panel.canvas.width, h = panel.canvas.height;
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, w, h);
    if (!panel.faces.length) {
      ctx.fillStyle = "#888888";
      ctx.font = "13px sans-serif";
      ctx.textAlign = "center";
      ctx.fillText("empty grid", w / 2, h / 2);
      panel.canvas.dataset.faces = "0";
      return;
    }
    const scale = (Math.min(w, h) / (panel.r * 1.75)) * view.zoom;
    const normals = DIRS.map(rotate), corners = CORNERS.map((cs) => cs.map(rotate));
    const shade = normals.map((n) => 0.4 + 0.6 * Math.max(0, n[0] * LIGHT[0] + n[1] * LIGHT[1] + n[2] * LIGHT[2]));
    const visible = [];
    for (const f of panel.faces) {
      if (normals[f[3]][2] <= 0) continue;  // facing away from the camera
      const c = rotate(f);
      visible.push([c[2], c, f[3]]);
    }
    visible.sort((a, b) => a[0] - b[0]);  // far to near
    ctx.lineWidth = 0.6;
    for (const [, c, d] of visible) {
      const k = shade[d];
      const rgb = "rgb(" + panel.colour.map((v) => Math.round(v * k)).join(",") + ")";
      ctx.fillStyle = rgb;
      ctx.strokeStyle = rgb;
      ctx.beginPath();
      corners[d].forEach((o, i) => {
        const sx = w / 2 + (c[0] + o[0]) * scale, sy = h / 2 - (c[1] + o[1]) * scale;
        if (i === 0) ctx.moveTo(sx, sy); else ctx.lineTo(sx, sy);
      });
      ctx.closePath();
      ctx.fill();
      ctx.stroke();
    }
    panel.canvas.dataset.faces = String(visible.length);
  }

  let pending = false;
  function repaint() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; panels.forEach(paint); });
  }

  function element(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function gridCell(grid, kind, caption) {
    const cell = element("div", "cell");
    if (!grid) {
      cell.appendChild(element("div", "none", "no ground truth"));
    } else {
      const canvas = element("canvas");
      canvas.width = SIZE;
      canvas.height = SIZE;
      const g = decode(grid);
      const panel = { canvas: canvas, r: g.r, faces: exposedFaces(g), colour: COLOURS[kind] };
      panels.push(panel);
      cell.appendChild(canvas);
    }
    cell.appendChild(element("div", "", caption));
    return cell;
  }

  function build(rows) {
    const root = document.getElementById("rows");
    for (const row of rows) {
      const iou = row.iou === null ? "" : "  \u2014  IoU " + row.iou.toFixed(3) + " at p \u2265 " + row.threshold;
      root.appendChild(element("h2", "", row.title + iou));
      const line = element("div", "row");
      const inputs = element("div", "cell");
      const views = element("div", "views");
      for (const src of row.images) {
        const img = element("img");
        img.src = src;
        img.alt = "input view";
        views.appendChild(img);
      }
      inputs.appendChild(views);
      inputs.appendChild(element("div", "", row.images.length + " input view(s)"));
      line.appendChild(inputs);
      line.appendChild(gridCell(row.gt, "gt", "ground truth"));
      line.appendChild(gridCell(row.pred, "pred", "prediction, p \u2265 " + row.threshold + " (" + row.occupied + " voxels)"));
      root.appendChild(line);
    }
  }

  let drag = null;
  window.addEventListener("mousedown", (e) => {
    if (e.target.tagName === "CANVAS") { drag = [e.clientX, e.clientY]; e.preventDefault(); }
  });
  window.addEventListener("mouseup", () => { drag = null; });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    view.yaw += (e.clientX - drag[0]) * 0.01;
    view.pitch = Math.max(-1.55, Math.min(1.55, view.pitch + (e.clientY - drag[1]) * 0.01));
    drag = [e.clientX, e.clientY];
    repaint();
  });
  window.addEventListener("wheel", (e) => {
    if (e.target.tagName !== "CANVAS") return;
    e.preventDefault();
    view.zoom = Math.max(0.3, Math.min(5, view.zoom * Math.exp(-e.deltaY * 0.001)));
    repaint();
  }, { passive: false });
  window.addEventListener("dblclick", (e) => {
    if (e.target.tagName === "CANVAS") { Object.assign(view, START); repaint(); }
  });

  build(JSON.parse(document.getElementById("r2n2-data").textContent));
  panels.forEach(paint);  // first paint now, so the page is complete when it has loaded
})();
