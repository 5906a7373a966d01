/**
 * Tests of the cuda backend (lib/backend/cuda.ts, lib/native/cuda.ts, native/cuda) and of the NCCL communicator
 * (lib/distributed/nccl.ts).
 *
 * Everywhere: the build product, cudaStatus(), and the addon's argument guards (bad input throws, never crashes).
 * Without a GPU: every cuda op throws TpkitError NO_CUDA_DEVICE / CUDA_UNAVAILABLE.
 * With a GPU (skipped otherwise, the reason logged): cuBLAS GEMM and the kernels against references computed in
 * JS or by the cpu backend (tolerances of DESIGN.md: float32 1e-5, float16 5e-3, bfloat16 2e-2 relative to the
 * output's scale), readback, device-memory reuse, and every NCCL collective at world size 1.
 */
import fs from 'node:fs';
import path from 'node:path';

import test, { type ExecutionContext } from 'ava';

import { cpuOps } from '../lib/backend/cpu';
import { cudaOps } from '../lib/backend/cuda';
import type { DType } from '../lib/backend/types';
import { REDOP_CODE, type OpContext, type RendezvousStore } from '../lib/distributed/comm';
import { NcclCommunicator } from '../lib/distributed/nccl';
import { TpkitError } from '../lib/errors';
import { packageRoot } from '../lib/native';
import { type CudaAddon, cudaAddonPath, cudaStatus, loadCuda } from '../lib/native/cuda';
import { add, cat, linear, matmul, rmsNorm, siluAndMul } from '../lib/ops';
import { DTYPES, Tensor } from '../lib/tensor';
import { rand } from './helpers/reference';

const status = cudaStatus();
const hasGpu = status.cuda;
const addon: CudaAddon | undefined = (() => {
  try {
    return loadCuda();
  } catch {
    return undefined;
  }
})();

/** Registers a test that needs a GPU; without one it is skipped (the reason is logged once, below). */
const gpuTest = hasGpu ? test : test.skip;
const gpuSerialTest = hasGpu ? test.serial : test.serial.skip;
const noGpuTest = hasGpu ? test.skip : test;
const addonTest = addon ? test : test.skip;

const TOLERANCE: Readonly<Record<DType, number>> = { float32: 1e-5, float16: 5e-3, bfloat16: 2e-2 };
const TIMEOUT_MS = 30_000;

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

/** C[M,N] = op(A)·op(B) in float64, A/B row-major as stored. */
function refMatmul(a: Float32Array, b: Float32Array, M: number, N: number, K: number, transA: boolean, transB: boolean): Float64Array {
  const c = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += a[transA ? k * M + i : i * K + k]! * b[transB ? j * K + k : k * N + j]!;
      c[i * N + j] = s;
    }
  }
  return c;
}

/** max |got − ref| / max |ref| (the error relative to the output's scale). */
function relError(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  let scale = 0;
  let err = 0;
  for (let i = 0; i < ref.length; i++) {
    scale = Math.max(scale, Math.abs(ref[i]!));
    err = Math.max(err, Math.abs(got[i]! - ref[i]!));
  }
  return err / Math.max(scale, 1e-30);
}

function assertClose(t: ExecutionContext, got: ArrayLike<number>, ref: ArrayLike<number>, tol: number, what: string): void {
  t.is(got.length, ref.length, `${what}: length`);
  const err = relError(got, ref);
  t.true(err <= tol, `${what}: relative error ${err} exceeds ${tol}`);
}

function disposeAll(...ts: Tensor[]): void {
  for (const x of ts) x.dispose();
}

/** The in-memory store of a world of one. */
class MemoryStore implements RendezvousStore {
  readonly #values = new Map<string, Buffer>();
  async set(key: string, value: Uint8Array): Promise<void> {
    this.#values.set(key, Buffer.from(value));
  }
  async get(key: string): Promise<Buffer> {
    for (let i = 0; i < 1000; i++) {
      const v = this.#values.get(key);
      if (v) return v;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error(`key ${key} never set`);
  }
}

function ctx(seq: number): OpContext {
  return { seq, timeoutMs: TIMEOUT_MS };
}

if (!hasGpu) {
  test('GPU tests', (t) => {
    t.log(`skipped: no GPU visible: ${status.reason ?? 'unknown reason'}`);
    t.pass();
  });
}

// ---------------------------------------------------------------------------------------------------------
// Everywhere: build product, status, argument guards
// ---------------------------------------------------------------------------------------------------------

test('the cuda addon is built when CUDA, cuBLAS and NCCL were found', (t) => {
  const cache = path.join(packageRoot(), 'build', 'CMakeCache.txt');
  if (!fs.existsSync(cache)) {
    t.log(`skipped: no CMake build at ${cache} (run npm run build:native)`);
    t.pass();
    return;
  }
  const text = fs.readFileSync(cache, 'utf8');
  const built = /^TPKIT_CUDA_BUILT:INTERNAL=(\w+)$/m.exec(text)?.[1];
  if (built !== 'ON') {
    const reason = /^TPKIT_CUDA_SKIP_REASON:INTERNAL=(.*)$/m.exec(text)?.[1] ?? 'TpkitCuda.cmake did not run';
    t.log(`skipped: the cuda addon was not built: ${reason}`);
    t.pass();
    return;
  }
  t.true(fs.existsSync(cudaAddonPath()), `expected ${cudaAddonPath()} after a build that found CUDA, cuBLAS and NCCL`);
  t.notThrows(() => loadCuda(), 'the built addon loads without LD_LIBRARY_PATH (RPATH to cuBLAS / NCCL)');
});

test('cudaStatus() never throws and explains why cuda is unavailable', (t) => {
  const s = cudaStatus();
  t.is(typeof s.cuda, 'boolean');
  t.is(typeof s.nccl, 'boolean');
  t.true(Number.isInteger(s.cudaDevices) && s.cudaDevices >= 0);
  if (s.cuda) {
    t.true(s.cudaDevices >= 1);
    t.is(s.reason, undefined);
    t.truthy(s.versions?.cublas);
    t.truthy(s.versions?.nccl);
  } else {
    t.is(s.cudaDevices, 0);
    t.false(s.nccl);
    t.is(typeof s.reason, 'string');
    t.true(s.reason!.length > 0);
    t.log(`cuda unavailable: ${s.reason}`);
  }
  t.deepEqual(cudaStatus(), s, 'stable across calls');
});

addonTest('the addon reports library versions without a device', (t) => {
  const s = addon!.status();
  t.regex(s.cudaRuntime ?? '', /^\d+\.\d+$/);
  t.regex(s.cublas ?? '', /^\d+\.\d+\.\d+$/);
  t.regex(s.nccl ?? '', /^2\.\d+\.\d+$/);
  if (s.deviceCount === 0) t.regex(s.deviceError ?? '', /cudaGetDeviceCount|0 devices/);
});

addonTest('the addon rejects bad arguments with TypeError / RangeError instead of crashing', (t) => {
  const a = addon!;
  t.throws(() => a.upload({} as never, new Float32Array(1)), { instanceOf: TypeError, message: 'Expected DeviceBuffer for dst' });
  t.throws(() => a.download(null as never), { instanceOf: TypeError, message: 'Expected DeviceBuffer for src' });
  t.throws(() => a.zero(new Float32Array(2) as never), { instanceOf: TypeError, message: 'Expected DeviceBuffer for buffer' });
  t.throws(() => a.cast(undefined as never, undefined as never), { instanceOf: TypeError, message: 'Expected DeviceBuffer for src' });
  t.throws(() => a.gemm({} as never, {} as never, {} as never, null, 1, 1, 1, false, false, false), {
    instanceOf: TypeError,
    message: 'Expected DeviceBuffer for a',
  });
  t.throws(() => a.cat([] as never, {} as never, 1, [1]), { instanceOf: RangeError, message: 'Expected between 1 and 2^20 parts' });
  t.throws(() => a.cat('x' as never, {} as never, 1, [1]), { instanceOf: TypeError, message: 'Expected array of DeviceBuffers for parts' });
  t.throws(() => new a.DeviceBuffer(-1, 0, 4), { instanceOf: RangeError, message: 'Expected integer in [0, 65536] for device' });
  t.throws(() => new a.DeviceBuffer(0, 3, 4), { instanceOf: RangeError, message: 'Expected integer in [0, 2] for dtype' });
  t.throws(() => new a.DeviceBuffer(0, 0, 'x' as never), { instanceOf: TypeError, message: 'Expected integer for numel' });
  t.throws(() => a.memoryInfo(1.5), { instanceOf: RangeError });
  t.throws(() => a.ncclUniqueId(new Uint8Array(4)), { instanceOf: TypeError, message: 'Expected Uint8Array of at least 128 bytes for out' });
  t.throws(() => new a.NcclComm(2, 2, 0, 1000), { instanceOf: RangeError, message: 'Expected integer in [0, 1] for rank' });
});

addonTest('ncclUniqueId works without a device', async (t) => {
  const id = new Uint8Array(128);
  await addon!.ncclUniqueId(id);
  t.true(id.some((b) => b !== 0));
});

// ---------------------------------------------------------------------------------------------------------
// Without a GPU
// ---------------------------------------------------------------------------------------------------------

function isCudaMissing(e: unknown): boolean {
  return e instanceof TpkitError && (e.code === 'NO_CUDA_DEVICE' || e.code === 'CUDA_UNAVAILABLE');
}

noGpuTest('cuda tensors throw TpkitError NO_CUDA_DEVICE or CUDA_UNAVAILABLE without a GPU', (t) => {
  const makers: Array<[string, () => unknown]> = [
    ['Tensor.zeros', () => Tensor.zeros([2], { device: 'cuda' })],
    ['Tensor.empty', () => Tensor.empty([2, 3], { device: 'cuda:0' })],
    ['Tensor.from', () => Tensor.from([1, 2], [2], { device: 'cuda', dtype: 'float16' })],
    ['Tensor.fromBits', () => Tensor.fromBits(new Uint16Array(2), [2], { dtype: 'bfloat16', device: 'cuda' })],
    ['cudaOps.zeros', () => cudaOps.zeros(2, 'float32', 'cuda:0')],
  ];
  for (const [name, make] of makers) {
    const err = t.throws(make, undefined, name);
    t.true(isCudaMissing(err), `${name}: ${String(err)}`);
    t.true((err as Error).message.length > 0);
  }
});

noGpuTest('moving a tensor to cuda rejects with a TpkitError without a GPU', async (t) => {
  const x = Tensor.from([1, 2, 3], [3]);
  const err = await t.throwsAsync(x.to({ device: 'cuda' }));
  t.true(isCudaMissing(err), String(err));
  x.dispose();
});

noGpuTest('NcclCommunicator cannot be created without a GPU', (t) => {
  const err = t.throws(() => new NcclCommunicator(0, 1, 0, 1000));
  t.true(isCudaMissing(err), String(err));
});

addonTest('native allocation without a GPU throws NO_CUDA_DEVICE', (t) => {
  if (hasGpu) {
    t.pass();
    return;
  }
  const err = t.throws(() => new addon!.DeviceBuffer(0, 0, 4));
  t.true(err instanceof TpkitError && err.code === 'NO_CUDA_DEVICE', String(err));
});

// ---------------------------------------------------------------------------------------------------------
// With a GPU: device selection, GEMM
// ---------------------------------------------------------------------------------------------------------

gpuTest('a device index beyond the visible devices is a RangeError', (t) => {
  const n = status.cudaDevices;
  t.throws(() => Tensor.zeros([2], { device: `cuda:${n}` }), {
    instanceOf: RangeError,
    message: `Expected 'cuda:N' with N in [0, ${n}) for device but received cuda:${n} of type string`,
  });
  t.throws(() => new NcclCommunicator(0, 1, n, 1000), { instanceOf: RangeError });
});

for (const dtype of DTYPES) {
  gpuTest(`matmul ${dtype} matches a float64 reference with every transpose`, async (t) => {
    const [M, N, K] = [33, 47, 64];
    let seed = 1;
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        const a = Tensor.from(rand(M * K, seed++), transA ? [K, M] : [M, K], { dtype, device: 'cuda' });
        const b = Tensor.from(rand(K * N, seed++), transB ? [N, K] : [K, N], { dtype, device: 'cuda' });
        // The reference takes the inputs as rounded to the dtype (read back from the device).
        const ref = refMatmul(await a.toFloat32Array(), await b.toFloat32Array(), M, N, K, transA, transB);
        const c = await matmul(a, b, { transA, transB });
        t.deepEqual(c.shape, [M, N]);
        t.is(c.dtype, dtype);
        t.is(c.device, 'cuda:0');
        assertClose(t, await c.toFloat32Array(), ref, TOLERANCE[dtype], `${dtype} transA=${transA} transB=${transB}`);
        disposeAll(a, b, c);
      }
    }
  });
}

gpuTest('matmul with tf32 stays within TF32 precision; odd shapes and an empty K work', async (t) => {
  const [M, N, K] = [17, 9, 129];
  const a = Tensor.from(rand(M * K, 11), [M, K], { device: 'cuda' });
  const b = Tensor.from(rand(K * N, 12), [K, N], { device: 'cuda' });
  const ref = refMatmul(await a.toFloat32Array(), await b.toFloat32Array(), M, N, K, false, false);
  const tf = await matmul(a, b, { tf32: true });
  assertClose(t, await tf.toFloat32Array(), ref, 5e-3, 'tf32');
  const full = await matmul(a, b);
  assertClose(t, await full.toFloat32Array(), ref, TOLERANCE.float32, 'float32 odd shapes');
  const e1 = Tensor.zeros([3, 0], { device: 'cuda' });
  const e2 = Tensor.zeros([0, 4], { device: 'cuda' });
  const z = await matmul(e1, e2);
  t.deepEqual(Array.from(await z.toFloat32Array()), new Array(12).fill(0));
  disposeAll(a, b, tf, full, e1, e2, z);
});

for (const dtype of DTYPES) {
  gpuTest(`linear ${dtype} (y = x·Wᵀ + b, bias fused) matches a float64 reference`, async (t) => {
    const [batch, seq, inF, outF] = [2, 5, 48, 40];
    const rows = batch * seq;
    const x = Tensor.from(rand(rows * inF, 21), [batch, seq, inF], { dtype, device: 'cuda' });
    const w = Tensor.from(rand(outF * inF, 22), [outF, inF], { dtype, device: 'cuda' });
    const bias = Tensor.from(rand(outF, 23), [outF], { dtype, device: 'cuda' });
    const xv = await x.toFloat32Array();
    const wv = await w.toFloat32Array();
    const bv = await bias.toFloat32Array();
    const ref = refMatmul(xv, wv, rows, outF, inF, false, true);
    const y0 = await linear(x, w);
    t.deepEqual(y0.shape, [batch, seq, outF]);
    t.is(y0.dtype, dtype);
    assertClose(t, await y0.toFloat32Array(), ref, TOLERANCE[dtype], `${dtype} linear without bias`);
    for (let r = 0; r < rows; r++) for (let o = 0; o < outF; o++) ref[r * outF + o] += bv[o]!;
    const y1 = await linear(x, w, bias);
    assertClose(t, await y1.toFloat32Array(), ref, TOLERANCE[dtype], `${dtype} linear with bias`);
    disposeAll(x, w, bias, y0, y1);
  });
}

// ---------------------------------------------------------------------------------------------------------
// With a GPU: kernels against the cpu backend
// ---------------------------------------------------------------------------------------------------------

gpuTest('siluAndMul, rmsNorm and add match the cpu backend (float32)', async (t) => {
  const [rows, cols] = [6, 160];
  const xv = rand(rows * cols, 31);
  const wv = rand(cols / 2, 32);
  const xc = Tensor.from(xv, [rows, cols]);
  const xg = Tensor.from(xv, [rows, cols], { device: 'cuda' });
  const wc = Tensor.from(wv, [cols / 2]);
  const wg = Tensor.from(wv, [cols / 2], { device: 'cuda' });

  const sc = await siluAndMul(xc);
  const sg = await siluAndMul(xg);
  t.deepEqual(sg.shape, [rows, cols / 2]);
  assertClose(t, await sg.toFloat32Array(), await sc.toFloat32Array(), 1e-6, 'siluAndMul');

  const nc = await rmsNorm(sc, wc, 1e-5);
  const ng = await rmsNorm(sg, wg, 1e-5);
  assertClose(t, await ng.toFloat32Array(), await nc.toFloat32Array(), 1e-5, 'rmsNorm');

  const ac = await add(xc, xc);
  const ag = await add(xg, xg);
  t.deepEqual(Array.from(await ag.toFloat32Array()), Array.from(await ac.toFloat32Array()));
  disposeAll(xc, xg, wc, wg, sc, sg, nc, ng, ac, ag);
});

for (const dtype of ['float16', 'bfloat16'] as const) {
  gpuTest(`siluAndMul and rmsNorm compute in float32 for ${dtype} storage`, async (t) => {
    const [rows, cols] = [4, 4096];
    const x = Tensor.from(rand(rows * cols, 41), [rows, cols], { dtype, device: 'cuda' });
    const w = Tensor.from(rand(cols, 42), [cols], { dtype, device: 'cuda' });
    const xr = Tensor.from(await x.toFloat32Array(), [rows, cols]);
    const wr = Tensor.from(await w.toFloat32Array(), [cols]);
    const n = await rmsNorm(x, w, 1e-6);
    t.is(n.dtype, dtype);
    assertClose(t, await n.toFloat32Array(), await (await rmsNorm(xr, wr, 1e-6)).toFloat32Array(), TOLERANCE[dtype], 'rmsNorm');
    const s = await siluAndMul(x);
    assertClose(t, await s.toFloat32Array(), await (await siluAndMul(xr)).toFloat32Array(), TOLERANCE[dtype], 'siluAndMul');
    disposeAll(x, w, xr, wr, n, s);
  });
}

gpuTest('rmsNorm and siluAndMul are right for hidden sizes that are not multiples of the block size', async (t) => {
  // The rmsNorm kernel picks 256, 512 or 1024 threads per row: sizes below, between and above each, odd ones,
  // and rows beyond one grid-stride step of a single block all go through the block reduction.
  for (const cols of [1, 7, 255, 257, 1000, 1023, 4097, 5120 + 3]) {
    const rowCount = 5;
    const xv = rand(rowCount * cols, 70 + cols);
    const wv = rand(cols, 71 + cols);
    const x = Tensor.from(xv, [rowCount, cols], { device: 'cuda' });
    const w = Tensor.from(wv, [cols], { device: 'cuda' });
    const got = await (await rmsNorm(x, w, 1e-6)).toFloat32Array();
    const ref = new Float64Array(rowCount * cols);
    for (let r = 0; r < rowCount; r++) {
      let ss = 0;
      for (let c = 0; c < cols; c++) ss += xv[r * cols + c]! ** 2;
      const inv = 1 / Math.sqrt(ss / cols + 1e-6);
      for (let c = 0; c < cols; c++) ref[r * cols + c] = xv[r * cols + c]! * inv * wv[c]!;
    }
    assertClose(t, got, ref, 1e-5, `rmsNorm cols=${cols}`);
    disposeAll(x, w);
  }
  for (const d of [1, 3, 257]) {
    const rowCount = 3;
    const xv = rand(rowCount * 2 * d, 80 + d);
    const x = Tensor.from(xv, [rowCount, 2 * d], { device: 'cuda' });
    const s = await siluAndMul(x);
    t.deepEqual(s.shape, [rowCount, d]);
    const ref = new Float64Array(rowCount * d);
    for (let r = 0; r < rowCount; r++) {
      for (let j = 0; j < d; j++) {
        const g = xv[r * 2 * d + j]!; // gate first, then up (vLLM's layout)
        const u = xv[r * 2 * d + d + j]!;
        ref[r * d + j] = (g / (1 + Math.exp(-g))) * u;
      }
    }
    assertClose(t, await s.toFloat32Array(), ref, 1e-6, `siluAndMul d=${d}`);
    disposeAll(x, s);
  }
});

for (const dtype of ['float16', 'bfloat16'] as const) {
  gpuTest(`linear ${dtype} with bias rounds once: (x·Wᵀ + b) in float32, then to ${dtype}`, async (t) => {
    // Integer-valued inputs keep every partial sum exact in float32, so the only rounding is the final one:
    // the fused epilogue (or the GemmEx fallback that folds the bias in) must equal the float64 reference
    // rounded once to the dtype (computed here through a cpu cast).
    const [rowCount, inF, outF] = [4, 16, 8];
    const xv = Float32Array.from({ length: rowCount * inF }, (_, i) => ((i * 7) % 13) - 6);
    const wv = Float32Array.from({ length: outF * inF }, (_, i) => ((i * 5) % 11) - 5);
    const bv = Float32Array.from({ length: outF }, (_, i) => 0.3 + i * 0.37); // not representable in the dtype
    const x = Tensor.from(xv, [rowCount, inF], { dtype, device: 'cuda' });
    const w = Tensor.from(wv, [outF, inF], { dtype, device: 'cuda' });
    const b = Tensor.from(bv, [outF], { dtype, device: 'cuda' });
    const bRounded = await b.toFloat32Array();
    const ref = refMatmul(xv, wv, rowCount, outF, inF, false, true);
    for (let r = 0; r < rowCount; r++) for (let o = 0; o < outF; o++) ref[r * outF + o] += bRounded[o]!;
    const refRounded = await Tensor.from(Float32Array.from(ref), [rowCount, outF], { dtype }).toFloat32Array();
    const y = await linear(x, w, b);
    t.deepEqual(Array.from(await y.toFloat32Array()), Array.from(refRounded));
    disposeAll(x, w, b, y);
  });
}

gpuTest('casts round to nearest even exactly like the cpu backend', async (t) => {
  const values = Float32Array.from([0, -0, 1 / 3, -2.5, 65504, 70000, 1e-8, 3.14159, -1e5, 0.1, 2 ** -24, 1 + 2 ** -9]);
  for (const dtype of DTYPES) {
    const c = Tensor.from(values, [values.length], { dtype });
    const g = Tensor.from(values, [values.length], { dtype, device: 'cuda' });
    t.deepEqual(Array.from(await g.toFloat32Array()), Array.from(await c.toFloat32Array()), `upload as ${dtype}`);
    for (const to of DTYPES) {
      const cc = await c.to(to);
      const gg = await g.to(to);
      t.is(gg.dtype, to);
      t.is(gg.device, 'cuda:0');
      t.deepEqual(Array.from(await gg.toFloat32Array()), Array.from(await cc.toFloat32Array()), `${dtype} → ${to}`);
      disposeAll(cc, gg);
    }
    disposeAll(c, g);
  }
  const bits = Uint16Array.from([0x3f80, 0xbf80, 0x4049, 0x7f7f, 0x0001]);
  const bc = Tensor.fromBits(bits, [5], { dtype: 'bfloat16' });
  const bg = Tensor.fromBits(bits, [5], { dtype: 'bfloat16', device: 'cuda' });
  t.deepEqual(Array.from(await bg.toFloat32Array()), Array.from(await bc.toFloat32Array()), 'fromBits bfloat16');
  disposeAll(bc, bg);
});

for (const dtype of DTYPES) {
  gpuTest(`narrow and cat match the cpu backend (${dtype})`, async (t) => {
    const shape = [3, 5, 4];
    const v = Float32Array.from({ length: 60 }, (_, i) => i - 20);
    const c = Tensor.from(v, shape, { dtype });
    const g = Tensor.from(v, shape, { dtype, device: 'cuda' });
    for (const [dim, start, length] of [[0, 1, 2], [1, 1, 3], [2, 0, 1], [2, 3, 1], [1, 0, 5], [1, 2, 0]] as const) {
      const nc = c.narrow(dim, start, length);
      const ng = g.narrow(dim, start, length);
      t.deepEqual(ng.shape, nc.shape);
      t.deepEqual(Array.from(await ng.toFloat32Array()), Array.from(await nc.toFloat32Array()), `narrow(${dim}, ${start}, ${length})`);
      disposeAll(nc, ng);
    }
    const parts = [0, 1, 2].map((k) => Float32Array.from({ length: 24 }, (_, i) => i * 3 + k));
    for (const dim of [0, 1, -1]) {
      const pc = parts.map((p) => Tensor.from(p, [2, 3, 4], { dtype }));
      const pg = parts.map((p) => Tensor.from(p, [2, 3, 4], { dtype, device: 'cuda' }));
      const cc = cat(pc, dim);
      const cg = cat(pg, dim);
      t.deepEqual(cg.shape, cc.shape);
      t.deepEqual(Array.from(await cg.toFloat32Array()), Array.from(await cc.toFloat32Array()), `cat dim ${dim}`);
      disposeAll(...pc, ...pg, cc, cg);
    }
    disposeAll(c, g);
  });
}

gpuTest('embedding gathers rows and gives a zero row for id -1', async (t) => {
  const [vocab, dim] = [10, 8];
  const table = rand(vocab * dim, 51);
  const ids = Int32Array.from([3, -1, 9, 0, 3]);
  const tc = cpuOps.fromFloat32(table, 'float32', 'cpu');
  const tg = cudaOps.fromFloat32(table, 'float32', 'cuda:0');
  const oc = await cpuOps.embedding(tc, ids, dim);
  const og = await cudaOps.embedding(tg, ids, dim);
  t.deepEqual(Array.from(await cudaOps.toFloat32(og)), Array.from(await cpuOps.toFloat32(oc)));
  for (const s of [tc, tg, oc, og]) s.free();
});

gpuTest('readback, writeFloat32, zeros and moves between devices', async (t) => {
  const n = 1 << 20;
  const v = rand(n, 61);
  const g = Tensor.from(v, [n], { device: 'cuda' });
  t.deepEqual(await g.toFloat32Array(), v, 'a 4 MiB round trip is exact');
  const w = rand(n, 62);
  await g._writeFloat32(w);
  t.deepEqual(await g.toFloat32Array(), w);
  const back = await g.to({ device: 'cpu' });
  t.is(back.device, 'cpu');
  t.deepEqual(await back.toFloat32Array(), w);
  const z = Tensor.zeros([7, 3], { dtype: 'bfloat16', device: 'cuda' });
  t.deepEqual(Array.from(await z.toFloat32Array()), new Array(21).fill(0));
  const empty = Tensor.zeros([0], { device: 'cuda' });
  t.is((await empty.toFloat32Array()).length, 0);
  g.dispose();
  g.dispose();
  t.throws(() => g.narrow(0, 0, 1), { instanceOf: TpkitError });
  disposeAll(back, z, empty);
});

gpuSerialTest('1,000 allocate/dispose cycles return device memory to the baseline', async (t) => {
  const a = loadCuda();
  const keep = Tensor.zeros([1], { device: 'cuda' }); // creates the device's pool
  await a.synchronize(0);
  const before = a.memoryInfo(0);
  for (let i = 0; i < 1000; i++) {
    const x = Tensor.empty([256, 1024], { device: 'cuda' }); // 1 MiB
    const y = Tensor.zeros([1000], { dtype: 'float16', device: 'cuda' });
    x.dispose();
    y.dispose();
  }
  await a.synchronize(0);
  const after = a.memoryInfo(0);
  t.log(`pool used ${before.poolUsed} → ${after.poolUsed} bytes, reserved ${before.poolReserved} → ${after.poolReserved}`);
  t.is(after.poolUsed, before.poolUsed, 'every buffer went back to the pool');
  t.true(after.poolReserved - before.poolReserved <= 64 * 2 ** 20, 'freed blocks are reused, not re-reserved');
  t.true(before.free - after.free <= 64 * 2 ** 20, 'device memory stays at the baseline');
  keep.dispose();
});

// ---------------------------------------------------------------------------------------------------------
// With a GPU: NCCL at world size 1
// ---------------------------------------------------------------------------------------------------------

gpuTest('NCCL at world size 1: every collective for every dtype', async (t) => {
  const comm = new NcclCommunicator(0, 1, 0, TIMEOUT_MS);
  t.teardown(() => comm.close());
  t.is(comm.backend, 'nccl');
  await comm.connect(new MemoryStore());
  let seq = 0;
  const values = [1, 2, 3, 4, 5, 6];
  for (const dtype of DTYPES) {
    const x = Tensor.from(values, [3, 2], { dtype, device: 'cuda' });
    for (const [name, redop] of Object.entries(REDOP_CODE)) {
      await comm.allReduce(x, redop, ctx(seq++));
      t.deepEqual(Array.from(await x.toFloat32Array()), values, `all_reduce ${name} ${dtype}`);
    }
    const g = await comm.allGather(x, -1, ctx(seq++));
    t.deepEqual(g.shape, [1, 3, 2]);
    t.is(g.dtype, dtype);
    t.deepEqual(Array.from(await g.toFloat32Array()), values, `all_gather ${dtype}`);
    const rs = await comm.reduceScatter(x, REDOP_CODE.sum, 0, ctx(seq++));
    t.deepEqual(rs.shape, [6]);
    t.deepEqual(Array.from(await rs.toFloat32Array()), values, `reduce_scatter ${dtype}`);
    await comm.broadcast(x, 0, ctx(seq++));
    t.deepEqual(Array.from(await x.toFloat32Array()), values, `broadcast ${dtype}`);
    const a2a = await comm.allToAll(x, ctx(seq++));
    t.deepEqual(a2a.shape, [3, 2]);
    t.deepEqual(Array.from(await a2a.toFloat32Array()), values, `all_to_all ${dtype}`);
    disposeAll(x, g, rs, a2a);
  }
  await comm.barrier(ctx(seq++));
  t.false(comm.isBroken);
});

gpuTest('NCCL rejects cpu tensors, self send and use after close', async (t) => {
  const comm = new NcclCommunicator(0, 1, 0, TIMEOUT_MS);
  await comm.connect(new MemoryStore());
  const c = Tensor.from([1, 2], [2]);
  await t.throwsAsync(comm.allReduce(c, REDOP_CODE.sum, ctx(0)), {
    instanceOf: TypeError,
    message: /^NCCL needs cuda tensors but received a cpu tensor/,
  });
  const g = Tensor.from([1, 2], [2], { device: 'cuda' });
  await t.throwsAsync(comm.send(g, 0, 0, TIMEOUT_MS), { instanceOf: RangeError, message: 'a rank cannot send to or receive from itself' });
  comm.close();
  comm.close();
  const err = await t.throwsAsync(comm.allReduce(g, REDOP_CODE.sum, ctx(1)));
  t.true(err instanceof TpkitError && err.code === 'GROUP_DESTROYED', String(err));
  disposeAll(c, g);
});

gpuTest('NCCL split at world size 1: a member gets a communicator, a non-member null', async (t) => {
  const comm = new NcclCommunicator(0, 1, 0, TIMEOUT_MS);
  t.teardown(() => comm.close());
  await comm.connect(new MemoryStore());
  const sub = await comm.split([0]);
  t.truthy(sub);
  t.is(sub!.rank, 0);
  t.is(sub!.size, 1);
  const x = Tensor.from([5, 6], [2], { dtype: 'bfloat16', device: 'cuda' });
  await sub!.allReduce(x, REDOP_CODE.avg, ctx(0));
  t.deepEqual(Array.from(await x.toFloat32Array()), [5, 6]);
  sub!.close();
  t.is(await comm.split([]), null);
  await t.throwsAsync(comm.split([1]), { instanceOf: RangeError });
  x.dispose();
});

gpuTest('NCCL init times out with TIMEOUT when a rank never joins', async (t) => {
  const comm = new NcclCommunicator(0, 2, 0, 2_000);
  t.teardown(() => comm.close());
  const started = Date.now();
  const err = await t.throwsAsync(comm.connect(new MemoryStore()));
  t.true(err instanceof TpkitError && err.code === 'TIMEOUT', String(err));
  t.regex(err!.message, /rank 0 of 2/);
  t.true(Date.now() - started < 20_000);
});
