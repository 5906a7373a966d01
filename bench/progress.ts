/**
 * Progress of long sweeps on stderr, drawn with cli-progress only when stderr is a terminal.
 *
 * Ranks started by the launcher have pipes, not a terminal, for stderr: when the benchmark re-launched
 * itself from a terminal, rank 0 writes progress as marked lines instead ({@link PROGRESS_MARK}), and the
 * parent process, which owns the terminal, draws the bar ({@link ProgressRelay}).
 *
 * @module
 */
import cliProgress from 'cli-progress';

/** Start of a progress line from rank 0 to the parent: `@@tpkit-bench-progress {"done":3,"total":20,"label":"64K"}`. */
export const PROGRESS_MARK = '@@tpkit-bench-progress ';

/** Environment variable by which the parent asks rank 0 for progress lines. */
export const PROGRESS_ENV = 'TPKIT_BENCH_PROGRESS';

/** A progress sink. */
export interface Progress {
  /** Sets the number of steps and the current step's label. */
  start(total: number, label: string): void;
  update(done: number, label: string): void;
  /** Removes the bar (idempotent). */
  stop(): void;
  /** Writes `text` to `dest` without garbling the bar (clears its line, writes, draws it again). */
  print(text: string, dest: NodeJS.WritableStream): void;
}

const NONE: Progress = { start() {}, update() {}, stop() {}, print: (text, dest) => void dest.write(text) };

/** A cli-progress bar on `stream` (a terminal). */
export function terminalBar(stream: NodeJS.WriteStream = process.stderr): Progress {
  const bar = new cliProgress.SingleBar(
    {
      stream,
      format: 'tpkit bench {bar} {value}/{total} | {label}',
      clearOnComplete: true,
      hideCursor: true,
      etaBuffer: 4,
      forceRedraw: true, // print() clears the line, so the next render must draw even if nothing changed
    },
    cliProgress.Presets.shades_classic,
  );
  let running = false;
  return {
    start(total, label) {
      running = true;
      bar.start(total, 0, { label });
    },
    update(done, label) {
      if (running) bar.update(done, { label });
    },
    stop() {
      if (running) bar.stop();
      running = false;
    },
    print(text, dest) {
      if (!running) {
        dest.write(text);
        return;
      }
      stream.write('\r\x1b[2K');
      dest.write(text);
      bar.render();
    },
  };
}

/** Marked progress lines on `stream`, for the parent to draw. */
export function progressLines(stream: NodeJS.WritableStream = process.stderr): Progress {
  let total = 0;
  const send = (done: number, label: string): void => {
    stream.write(`${PROGRESS_MARK}${JSON.stringify({ done, total, label })}\n`);
  };
  return {
    start(t, label) {
      total = t;
      send(0, label);
    },
    update: send,
    stop() {},
    print: (text, dest) => void dest.write(text),
  };
}

/**
 * The progress sink of this process: a bar when stderr is a terminal, marked lines when the parent asked
 * for them (and this is rank 0), else nothing.
 */
export function createProgress(isReporter: boolean, env: NodeJS.ProcessEnv = process.env): Progress {
  if (!isReporter) return NONE;
  if (env[PROGRESS_ENV] === 'lines') return progressLines();
  if (process.stderr.isTTY && env.RANK === undefined) return terminalBar();
  return NONE;
}

/** Parses a marked progress line; null for any other line. */
export function parseProgressLine(line: string): { done: number; total: number; label: string } | null {
  const at = line.indexOf(PROGRESS_MARK);
  if (at < 0) return null;
  try {
    const v = JSON.parse(line.slice(at + PROGRESS_MARK.length)) as { done: number; total: number; label: string };
    return typeof v.done === 'number' && typeof v.total === 'number' ? v : null;
  } catch {
    return null;
  }
}

/** Draws the bar of the marked lines it is given (the parent side). */
export class ProgressRelay {
  #bar: Progress | null;
  #started = false;
  constructor(bar: Progress | null) {
    this.#bar = bar;
  }
  handle(p: { done: number; total: number; label: string }): void {
    if (!this.#bar) return;
    if (!this.#started) {
      this.#bar.start(p.total, p.label);
      this.#started = true;
    }
    this.#bar.update(p.done, p.label);
    if (p.done >= p.total) this.stop();
  }
  stop(): void {
    this.#bar?.stop();
    this.#started = false;
  }
  /** Writes a line of the ranks' output around the bar. */
  print(text: string, dest: NodeJS.WritableStream): void {
    if (this.#bar && this.#started) this.#bar.print(text, dest);
    else dest.write(text);
  }
}
