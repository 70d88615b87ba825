// The room the lobby shares (sonalyze.rooms: a shoebox, or a polygon floor plan with a height, and device
// positions strictly inside). Pure: the checks here mirror the backend's so a person sees the problem
// next to the field before sending; the backend's answer stays the authority.

export const SHOEBOX_SURFACES = ["floor", "ceiling", "north", "south", "east", "west"];
export const POLYGON_SURFACES = ["walls", "floor", "ceiling"];
const PREFERRED = { floor: "carpet_cotton", ceiling: "plasterboard", walls: "brickwork" };

/** A material the materials list knows, preferring a sensible default for the surface. */
export function defaultMaterial(surface, names) {
  const wanted = PREFERRED[surface] ?? PREFERRED.walls;
  return names.includes(wanted) ? wanted : (names[0] ?? { absorption: 0.1 });
}

export function defaultRoomForm(names) {
  const materials = {};
  for (const s of new Set([...SHOEBOX_SURFACES, ...POLYGON_SURFACES])) materials[s] = defaultMaterial(s, names);
  return { type: "shoebox", dimensions_m: [5, 4, 2.5], corners_text: "0, 0\n5, 0\n5, 4\n0, 4", height_m: 2.5, materials };
}

/** "x, y" per line (or ";" between points) → [[x, y], ...]; null with the line's problem when unreadable. */
export function parseCorners(text) {
  const corners = [];
  const parts = String(text).split(/[\n;]+/).map((p) => p.trim()).filter(Boolean);
  for (const [i, part] of parts.entries()) {
    const nums = part.split(/[\s,]+/).filter(Boolean).map(Number);
    if (nums.length !== 2 || nums.some((n) => !Number.isFinite(n))) return { corners: null, problem: `corner ${i + 1} ("${part}") is not two numbers x, y` };
    corners.push(nums);
  }
  return { corners, problem: null };
}

const cross = (o, a, b) => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
const onSegment = (p, a, b) => Math.min(a[0], b[0]) <= p[0] && p[0] <= Math.max(a[0], b[0]) && Math.min(a[1], b[1]) <= p[1] && p[1] <= Math.max(a[1], b[1]);
export const signedArea = (c) => 0.5 * c.reduce((s, p, i) => s + p[0] * c[(i + 1) % c.length][1] - c[(i + 1) % c.length][0] * p[1], 0);

function segmentsIntersect(a, b, c, d) {
  const d1 = cross(c, d, a), d2 = cross(c, d, b), d3 = cross(a, b, c), d4 = cross(a, b, d);
  if (((d1 > 0 && d2 < 0) || (d1 < 0 && d2 > 0)) && ((d3 > 0 && d4 < 0) || (d3 < 0 && d4 > 0))) return true;
  return (d1 === 0 && onSegment(a, c, d)) || (d2 === 0 && onSegment(b, c, d)) || (d3 === 0 && onSegment(c, a, b)) || (d4 === 0 && onSegment(d, a, b));
}
const foldsBack = (s, p, q) => cross(s, p, q) === 0 && (p[0] - s[0]) * (q[0] - s[0]) + (p[1] - s[1]) * (q[1] - s[1]) > 0;

/** Why the corners are not a simple polygon (the backend's rule, sonalyze.rooms._polygon_problem), or null. */
export function polygonProblem(c) {
  const n = c.length;
  if (n < 3) return "a floor plan needs at least 3 corners";
  if (n > 100) return "a floor plan has at most 100 corners";
  for (let i = 0; i < n; i++) if (c[i][0] === c[(i + 1) % n][0] && c[i][1] === c[(i + 1) % n][1]) return `corners ${i + 1} and ${((i + 1) % n) + 1} coincide`;
  for (let i = 0; i < n; i++) {
    const a = c[i], b = c[(i + 1) % n];
    for (let j = i + 1; j < n; j++) {
      const cc = c[j], d = c[(j + 1) % n];
      let crossing;
      if (j === i + 1) crossing = foldsBack(b, a, d);
      else if (i === 0 && j === n - 1) crossing = foldsBack(a, b, cc);
      else crossing = segmentsIntersect(a, b, cc, d);
      if (crossing) return `walls ${i + 1} and ${j + 1} cross or overlap: the outline must not intersect itself`;
    }
  }
  if (Math.abs(signedArea(c)) <= 1e-9) return "the floor plan has zero area";
  return null;
}

/** The room (sonalyze.rooms JSON) from the form, and the problems by field name (empty when valid). */
export function roomFromForm(form) {
  const errors = {};
  const positive = (v, field, what) => {
    const x = Number(v);
    if (!Number.isFinite(x) || x <= 0) errors[field] = `${what} must be a number of metres above 0`;
    else if (x > 1000) errors[field] = `${what} must be at most 1000 m`;
    return x;
  };
  const material = (s) => form.materials[s];
  let room;
  if (form.type === "shoebox") {
    const dims = ["length (x)", "width (y)", "height (z)"].map((what, i) => positive(form.dimensions_m[i], `dimensions_m.${i}`, what));
    room = { type: "shoebox", dimensions_m: dims, materials: Object.fromEntries(SHOEBOX_SURFACES.map((s) => [s, material(s)])) };
  } else {
    const { corners, problem } = parseCorners(form.corners_text);
    const geometry = problem ?? polygonProblem(corners);
    if (geometry) errors.corners_m = geometry;
    const height = positive(form.height_m, "height_m", "the height");
    room = { type: "polygon", corners_m: corners ?? [], height_m: height, materials: Object.fromEntries(POLYGON_SURFACES.map((s) => [s, material(s)])) };
  }
  for (const [surface, m] of Object.entries(room.materials)) {
    if (typeof m === "object" && m !== null) {
      const a = Number(m.absorption);
      if (!Number.isFinite(a) || a < 0 || a > 1) errors[`materials.${surface}`] = "an absorption coefficient is a number from 0 to 1";
    }
  }
  return { room, errors };
}

/** Floor-plan bounding box [minX, minY, maxX, maxY] and the height. */
export function extent(room) {
  if (room.type === "shoebox") return { box: [0, 0, room.dimensions_m[0], room.dimensions_m[1]], height: room.dimensions_m[2] };
  const xs = room.corners_m.map((p) => p[0]), ys = room.corners_m.map((p) => p[1]);
  return { box: [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)], height: room.height_m };
}

/** Strictly inside the room (not on a wall): sonalyze.rooms' contains(). */
export function contains(room, [x, y, z]) {
  if (room.type === "shoebox") return [x, y, z].every((p, i) => p > 0 && p < room.dimensions_m[i]);
  if (!(z > 0 && z < room.height_m)) return false;
  const c = room.corners_m;
  let inside = false;
  for (let i = 0; i < c.length; i++) {
    const a = c[i], b = c[(i + 1) % c.length];
    if (cross(a, b, [x, y]) === 0 && onSegment([x, y], a, b)) return false;
    if ((a[1] > y) !== (b[1] > y) && x < a[0] + ((y - a[1]) * (b[0] - a[0])) / (b[1] - a[1])) inside = !inside;
  }
  return inside;
}

/** Positions for devices that have none yet (1.2 m high): each at the spot of a 9×9 grid over the floor
 *  plan (inside the room) farthest from the devices already placed, so no two start on top of each other. */
export function defaultPositions(room, deviceIds, known = {}) {
  const { box, height } = extent(room);
  const z = Math.min(1.2, height / 2);
  const round = (v) => Math.round(v * 100) / 100;
  const spots = [];
  for (let i = 1; i < 10; i++) for (let j = 1; j < 10; j++) {
    const p = [round(box[0] + (i / 10) * (box[2] - box[0])), round(box[1] + (j / 10) * (box[3] - box[1])), z];
    if (contains(room, p)) spots.push(p);
  }
  const out = {};
  deviceIds.forEach((id) => { if (known[id]) out[id] = known[id]; });
  for (const id of deviceIds.filter((x) => !known[x])) {
    const placed = Object.values(out);
    let best = spots[Math.floor(spots.length / 2)] ?? [round((box[0] + box[2]) / 2), round((box[1] + box[3]) / 2), z], bestD = -1;
    if (placed.length) {
      for (const p of spots) {
        const d = Math.min(...placed.map((q) => Math.hypot(p[0] - q[0], p[1] - q[1])));
        if (d > bestD) { best = p; bestD = d; }
      }
    }
    out[id] = [...best];
  }
  return out;
}

/** Problems of device positions by device id. */
export function positionErrors(room, positions) {
  const errors = {};
  for (const [id, p] of Object.entries(positions)) {
    if (!Array.isArray(p) || p.length !== 3 || p.some((v) => !Number.isFinite(Number(v)))) errors[id] = "a position is three numbers x, y, z in metres";
    else if (!contains(room, p.map(Number))) errors[id] = `position [${p.join(", ")}] is outside the room (it must be strictly inside, not on a wall)`;
  }
  return errors;
}

/** The lobby.room_snapshot payload. */
export function snapshot(room, positions) {
  return { room, devices: Object.fromEntries(Object.entries(positions).map(([id, p]) => [id, { position_m: p.map(Number) }])) };
}

/** The form from a shared snapshot (so everyone edits the same room). */
export function formFromRoom(room, names) {
  const form = defaultRoomForm(names);
  form.type = room.type;
  if (room.type === "shoebox") form.dimensions_m = [...room.dimensions_m];
  else { form.corners_text = room.corners_m.map((p) => `${p[0]}, ${p[1]}`).join("\n"); form.height_m = room.height_m; }
  for (const [s, m] of Object.entries(room.materials)) form.materials[s] = Array.isArray(m) ? m[0] : m;
  return form;
}
