/**
 * A Hugging Face model directory: `config.json` plus `model.safetensors`, or shards
 * `model-0000k-of-0000n.safetensors` listed by `model.safetensors.index.json` (`weight_map`: tensor name →
 * file). Shard files are opened only when a tensor in them is asked for, so a rank that needs a few layers
 * (a pipeline stage) opens only their shards.
 *
 * @module
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

import { TpkitError } from '../errors';
import { SafetensorsFile } from '../checkpoint/safetensors';
import { nonEmptyString } from '../validate';

/** Name of the single-file checkpoint. */
export const SINGLE_FILE = 'model.safetensors';
/** Name of the shard index. */
export const INDEX_FILE = 'model.safetensors.index.json';

async function isFile(p: string): Promise<boolean> {
  try {
    return (await fsp.stat(p)).isFile();
  } catch {
    return false;
  }
}

/** Reads and parses a JSON file of the directory. @throws TpkitError `CHECKPOINT_INVALID` naming the file */
export async function readJsonFile(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new TpkitError('CHECKPOINT_INVALID', code === 'ENOENT' ? `${file} does not exist` : `${file} could not be read (${code ?? (e as Error).message})`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new TpkitError('CHECKPOINT_INVALID', `${file} is not valid JSON (${(e as Error).message})`);
  }
}

/** The safetensors files of a model directory, tensor by tensor. */
export class CheckpointDir {
  /** The directory. */
  readonly dir: string;
  /** Where the tensor names come from (the index file, or the single file). */
  readonly source: string;
  readonly #fileOf: Map<string, string>;
  readonly #open = new Map<string, Promise<SafetensorsFile>>();

  private constructor(dir: string, source: string, fileOf: Map<string, string>, opened?: SafetensorsFile) {
    this.dir = dir;
    this.source = source;
    this.#fileOf = fileOf;
    if (opened) this.#open.set(path.basename(opened.path), Promise.resolve(opened));
  }

  /**
   * Opens the directory's index (or the single file's header).
   *
   * @throws TypeError for a non-string dir; TpkitError `CHECKPOINT_INVALID` naming the directory when it holds
   *   neither `model.safetensors` nor `model.safetensors.index.json`, or naming the index for a malformed one
   */
  static async open(dir: string): Promise<CheckpointDir> {
    nonEmptyString(dir, 'dir');
    const indexPath = path.join(dir, INDEX_FILE);
    if (await isFile(indexPath)) {
      const json = (await readJsonFile(indexPath)) as { weight_map?: unknown };
      const map = json && typeof json === 'object' ? json.weight_map : undefined;
      if (!map || typeof map !== 'object' || Array.isArray(map)) {
        throw new TpkitError('CHECKPOINT_INVALID', `${indexPath}: expected an object "weight_map" (tensor name → file)`);
      }
      const fileOf = new Map<string, string>();
      for (const [name, file] of Object.entries(map as Record<string, unknown>)) {
        if (typeof file !== 'string' || file.length === 0 || path.basename(file) !== file || !file.endsWith('.safetensors')) {
          throw new TpkitError('CHECKPOINT_INVALID', `${indexPath}: weight_map["${name}"] must name a .safetensors file in the directory but is ${JSON.stringify(file)}`);
        }
        fileOf.set(name, file);
      }
      return new CheckpointDir(dir, indexPath, fileOf);
    }
    const single = path.join(dir, SINGLE_FILE);
    if (!(await isFile(single))) {
      throw new TpkitError('CHECKPOINT_INVALID', `${dir} holds neither ${SINGLE_FILE} nor ${INDEX_FILE}`);
    }
    const f = await SafetensorsFile.open(single);
    const fileOf = new Map(f.list().map((i) => [i.name, SINGLE_FILE] as [string, string]));
    return new CheckpointDir(dir, single, fileOf, f);
  }

  /** Whether the checkpoint has tensor `name`. */
  has(name: string): boolean {
    return this.#fileOf.has(name);
  }

  /** Every tensor name of the checkpoint. */
  names(): string[] {
    return [...this.#fileOf.keys()];
  }

  /**
   * The open file holding tensor `name` (opened on first use; checked to really contain it).
   *
   * @throws TpkitError `CHECKPOINT_INVALID` naming the tensor and the index or file when it is missing, or the
   *   shard file when it cannot be opened
   */
  async fileFor(name: string): Promise<SafetensorsFile> {
    const file = this.#fileOf.get(name);
    if (file === undefined) throw new TpkitError('CHECKPOINT_INVALID', `tensor '${name}' is missing from ${this.source}`);
    let p = this.#open.get(file);
    if (!p) {
      const full = path.join(this.dir, file);
      p = SafetensorsFile.open(full).catch((e: unknown) => {
        if (e instanceof TpkitError) throw e;
        const code = (e as NodeJS.ErrnoException).code;
        throw new TpkitError('CHECKPOINT_INVALID', `${full} (listed in ${this.source}) could not be opened (${code ?? (e as Error).message})`);
      });
      this.#open.set(file, p);
    }
    const f = await p;
    if (!f.list().some((i) => i.name === name)) {
      throw new TpkitError('CHECKPOINT_INVALID', `tensor '${name}' is listed in ${this.source} for ${file} but that file does not hold it`);
    }
    return f;
  }

  /** Files opened so far (base names), for tests and reports. */
  get openedFiles(): string[] {
    return [...this.#open.keys()];
  }

  /** Closes every opened file. Idempotent. */
  async close(): Promise<void> {
    const all = [...this.#open.values()];
    this.#open.clear();
    await Promise.all(all.map(async (p) => (await p.catch(() => null))?.close()));
  }
}
