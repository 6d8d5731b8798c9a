// Where a JSON path (an error's `loc`) points in the spec's text, so the editor can select it.

// "model.layers[2].in_features" → ["model", "layers", 2, "in_features"]
export function splitLoc(loc) {
  return [...loc.matchAll(/([^.[\]]+)|\[(\d+)\]/g)].map((m) => (m[2] !== undefined ? Number(m[2]) : m[1]));
}

// A cursor over JSON text that can skip whole values; no positions come out of JSON.parse.
class Scanner {
  constructor(text) {
    this.text = text;
    this.i = 0;
  }

  get ch() {
    return this.text[this.i];
  }

  get done() {
    return this.i >= this.text.length;
  }

  space() {
    while (!this.done && /\s/.test(this.ch)) this.i++;
  }

  skipString() {
    this.i++;
    while (!this.done && this.ch !== '"') this.i += this.ch === "\\" ? 2 : 1;
    this.i++;
  }

  skipValue() {
    this.space();
    if (this.ch === '"') return this.skipString();
    if (this.ch === "{" || this.ch === "[") return this.skipNested();
    while (!this.done && !/[,\]}\s]/.test(this.ch)) this.i++;
  }

  skipNested() {
    let depth = 0;
    do {
      if (this.ch === '"') {
        this.skipString();
        continue;
      }
      if (this.ch === "{" || this.ch === "[") depth++;
      else if (this.ch === "}" || this.ch === "]") depth--;
      this.i++;
    } while (depth > 0 && !this.done);
  }

  // Past the comma between two members or items.
  next() {
    this.space();
    if (this.ch === ",") this.i++;
    this.space();
  }

  // Into an array, to its n-th item; false when it has fewer.
  enterItem(n) {
    this.i++;
    this.space();
    for (let k = 0; k < n && !this.done && this.ch !== "]"; k++) {
      this.skipValue();
      this.next();
    }
    return !this.done && this.ch !== "]";
  }

  // Into an object, to the value of `key`; false when it has no such member.
  enterMember(key) {
    this.i++;
    this.space();
    while (!this.done && this.ch !== "}") {
      const start = this.i;
      this.skipString();
      const name = JSON.parse(this.text.slice(start, this.i));
      this.space();
      this.i++; // the colon
      this.space();
      if (name === key) return true;
      this.skipValue();
      this.next();
    }
    return false;
  }
}

// The [start, end) offsets in `text` of the value at JSON path `loc`, or of its deepest existing parent
// when the path names a missing field. `text` is already valid JSON.
export function locate(text, loc) {
  const s = new Scanner(text);
  let found = null;
  s.space();
  for (const key of splitLoc(loc)) {
    const isItem = typeof key === "number" && s.ch === "[";
    const isMember = typeof key === "string" && s.ch === "{";
    if (!(isItem ? s.enterItem(key) : isMember && s.enterMember(key))) return found;
    const start = s.i;
    s.skipValue();
    found = [start, s.i];
    s.i = start;
  }
  return found;
}
