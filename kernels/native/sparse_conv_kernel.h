// The inner loops of SparseConv (sparse_conv.cc), compiled once per instruction set: sparse_conv.cc includes this
// file three times, each time inside its own namespace, after defining there
//   ISA_ATTR  the function attribute of that instruction set (empty, or __attribute__((target("avx2,fma"))) ...),
//   struct V  its float vector: R (the register type), W (lanes), kNV (vectors in a full tile), kShift (whether
//             residue groups are used, below), and static zero/bcast/load/loadn/fma/add/max0/store/storen
//             (loadn/storen: the first n < W lanes, no access past them) and shift_add (kShift only).
// Deliberately no include guard, and no standard-library templates below (an instantiation made here would carry
// this file's target attribute into code that other, portable callers share).
//
// The algorithm (see sparse_conv.cc for the layout): the output plane of one output channel is computed as a
// flat vector over positions p = oh * Wf + ow (ow < Wf; columns ow >= OW are scratch and never stored), and
//   out[p] = bias + sum over the channel's nonzeros e of e.v * in[p + e.off],
// so one tile of kNV * W consecutive positions lives in kNV registers while the nonzero list streams past: per
// nonzero one broadcast and kNV loads + FMAs (XNNPACK's SpMM / SkimCaffe's direct sparse convolution).
//
// Residue groups (kShift, AVX-512): a 64-byte load at an offset that is not a multiple of 16 floats splits two
// cache lines and costs about 1.6x an aligned one here. So each (chunk, output channel) list is a sequence of
// groups, one per offset residue r = off mod 16, every entry's off stored as off - r (a multiple of 16): a group
// with r != 0 accumulates kNV + 1 aligned vectors, i.e. positions [p0 - r, p0 - r + (kNV+1)*16), which are then
// shifted by r lanes (one two-register permute per vector) and added to the tile. The buffer has guard floats
// before and after so those extra reads stay inside it. Without kShift there is one group with r = 0.
// List format: header Entry {off = count, v = bits of r}, then count entries.

constexpr int kTile = V::kNV * V::W;  // flat positions per full tile

// (no std::min here: see above)
ISA_ATTR inline int64_t lo64(int64_t a, int64_t b) { return a < b ? a : b; }

ISA_ATTR inline int group_residue(const Entry& h) {
  int r;
  __builtin_memcpy(&r, &h.v, sizeof r);
  return r;
}

// Stores cnt results (flat positions p0 .. p0+cnt) of one output channel into its output plane `out` (OH x OW),
// dropping the scratch columns ow >= OW.
ISA_ATTR inline void scatter_rows(const float* tmp, int64_t p0, int64_t cnt, float* out, int64_t Wf, int64_t OW) {
  int64_t oh = p0 / Wf, ow = p0 - oh * Wf, done = 0;
  while (done < cnt) {
    int64_t run = lo64(Wf - ow, cnt - done);
    if (ow < OW) {
      int64_t valid = lo64(run, OW - ow);
      __builtin_memcpy(out + oh * OW + ow, tmp + done, static_cast<size_t>(valid) * sizeof(float));
    }
    done += run;
    ++oh;
    ow = 0;
  }
}

// A tile of NV whole vectors (NV = kNV, or fewer for the last tile of a guarded copy, where reading past the
// last position is harmless), started from `init` (partial sums of earlier input-channel chunks) or from the
// bias, stored to dst (relu applied when asked; the last vector only its first `last` lanes).
// e .. end: the residue groups of one (chunk, output channel).
template <int NV>
ISA_ATTR inline void tile_full(const float* base, const Entry* e, const Entry* end, const float* init, float bias,
                               bool relu, float* dst, int last) {
  typename V::R acc[NV];
  if (init) {
#pragma GCC unroll 16
    for (int i = 0; i < NV; ++i) acc[i] = V::load(init + i * V::W);
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < NV; ++i) acc[i] = V::bcast(bias);
  }
  while (e != end) {
    const int n = e->off, r = group_residue(*e);
    const Entry* ge = e + 1;
    const Entry* gend = ge + n;
    if (!V::kShift || r == 0) {
      for (; ge != gend; ++ge) {
        const float* p = base + ge->off;
        typename V::R w = V::bcast(ge->v);
#pragma GCC unroll 16
        for (int i = 0; i < NV; ++i) acc[i] = V::fma(w, V::load(p + i * V::W), acc[i]);
      }
    } else {
      typename V::R g[NV + 1];
#pragma GCC unroll 17
      for (int i = 0; i <= NV; ++i) g[i] = V::zero();
      for (; ge != gend; ++ge) {
        const float* p = base + ge->off;
        typename V::R w = V::bcast(ge->v);
#pragma GCC unroll 17
        for (int i = 0; i <= NV; ++i) g[i] = V::fma(w, V::load(p + i * V::W), g[i]);
      }
      V::template shift_add<NV>(acc, g, r);
    }
    e = gend;
  }
  if (relu) {
#pragma GCC unroll 16
    for (int i = 0; i < NV; ++i) acc[i] = V::max0(acc[i]);
  }
#pragma GCC unroll 16
  for (int i = 0; i + 1 < NV; ++i) V::store(dst + i * V::W, acc[i]);
  if (last == V::W)
    V::store(dst + (NV - 1) * V::W, acc[NV - 1]);
  else
    V::storen(dst + (NV - 1) * V::W, acc[NV - 1], last);
}

template <int NV>
ISA_ATTR inline void tile_full_dispatch(int nv, const float* base, const Entry* e, const Entry* end,
                                        const float* init, float bias, bool relu, float* dst, int last) {
  if constexpr (NV >= 1) {
    if (nv == NV) {
      tile_full<NV>(base, e, end, init, bias, relu, dst, last);
      return;
    }
    tile_full_dispatch<NV - 1>(nv, base, e, end, init, bias, relu, dst, last);
  }
}

// A short tile: NV vectors, the last with `last` lanes (1..W): input reads stop at the last lane (unaligned
// loads at the entries' true offsets); dst gets the last vector whole (a kTile scratch) when store_all, else
// only its `last` lanes. Two accumulator sets (even and odd nonzeros) keep enough FMA chains in flight.
template <int NV>
ISA_ATTR inline void tile_short(const float* base, const Entry* e, const Entry* end, const float* init, float bias,
                                bool relu, float* dst, int last, bool store_all) {
  typename V::R a0[NV], a1[NV];
#pragma GCC unroll 16
  for (int i = 0; i < NV; ++i) {
    a0[i] = init ? V::load(init + i * V::W) : V::bcast(bias);
    a1[i] = V::zero();
  }
  const bool full_last = last == V::W;
  while (e != end) {
    const int n = e->off, r = group_residue(*e);
    const float* gbase = base + r;
    const Entry* ge = e + 1;
    const Entry* gend = ge + n;
    for (; ge + 1 < gend; ge += 2) {
      const float* p = gbase + ge[0].off;
      const float* q = gbase + ge[1].off;
      typename V::R w0 = V::bcast(ge[0].v), w1 = V::bcast(ge[1].v);
#pragma GCC unroll 16
      for (int i = 0; i + 1 < NV; ++i) {
        a0[i] = V::fma(w0, V::load(p + i * V::W), a0[i]);
        a1[i] = V::fma(w1, V::load(q + i * V::W), a1[i]);
      }
      if (full_last) {
        a0[NV - 1] = V::fma(w0, V::load(p + (NV - 1) * V::W), a0[NV - 1]);
        a1[NV - 1] = V::fma(w1, V::load(q + (NV - 1) * V::W), a1[NV - 1]);
      } else {
        a0[NV - 1] = V::fma(w0, V::loadn(p + (NV - 1) * V::W, last), a0[NV - 1]);
        a1[NV - 1] = V::fma(w1, V::loadn(q + (NV - 1) * V::W, last), a1[NV - 1]);
      }
    }
    if (ge != gend) {
      const float* p = gbase + ge->off;
      typename V::R w0 = V::bcast(ge->v);
#pragma GCC unroll 16
      for (int i = 0; i + 1 < NV; ++i) a0[i] = V::fma(w0, V::load(p + i * V::W), a0[i]);
      a0[NV - 1] = V::fma(w0, full_last ? V::load(p + (NV - 1) * V::W) : V::loadn(p + (NV - 1) * V::W, last),
                          a0[NV - 1]);
    }
    e = gend;
  }
#pragma GCC unroll 16
  for (int i = 0; i < NV; ++i) {
    a0[i] = V::add(a0[i], a1[i]);
    if (relu) a0[i] = V::max0(a0[i]);
  }
#pragma GCC unroll 16
  for (int i = 0; i + 1 < NV; ++i) V::store(dst + i * V::W, a0[i]);
  if (full_last || store_all)
    V::store(dst + (NV - 1) * V::W, a0[NV - 1]);
  else
    V::storen(dst + (NV - 1) * V::W, a0[NV - 1], last);
}

template <int NV>
ISA_ATTR inline void tile_short_dispatch(int nv, const float* base, const Entry* e, const Entry* end,
                                         const float* init, float bias, bool relu, float* dst, int last,
                                         bool store_all) {
  if constexpr (NV >= 1) {
    if (nv == NV) {
      tile_short<NV>(base, e, end, init, bias, relu, dst, last, store_all);
      return;
    }
    tile_short_dispatch<NV - 1>(nv, base, e, end, init, bias, relu, dst, last, store_all);
  }
}

// One task: output channels [m0, m1) of one image, flat positions [p0, p1) (p0 a multiple of kTile).
// Loop order: tile, input-channel chunk, output channel. A chunk's input rows for one tile fit in L1 while every
// output channel's nonzeros of that chunk pass; partial sums wait in t.acc (kTile floats per output channel)
// between chunks. A channel's first chunk with nonzeros starts from the bias, its last one applies Relu and
// stores the output; chunks without nonzeros are skipped.
ISA_ATTR void conv_task(const ConvTask& t) {
  alignas(64) float tmp[kTile];
  const bool direct = t.Wf == t.OW;  // no scratch columns: the flat vector is the output plane itself
  for (int64_t p = t.p0; p < t.p1; p += kTile) {
    const int64_t cnt = lo64(kTile, t.p1 - p);
    const float* base = t.in + p;
    const int nv = static_cast<int>((cnt + V::W - 1) / V::W);
    const int last = static_cast<int>(cnt - static_cast<int64_t>(nv - 1) * V::W);
    for (int64_t k = 0; k < t.chunks; ++k) {
      const int64_t* row = t.rowptr + k * t.M;
      for (int64_t m = t.m0; m < t.m1; ++m) {
        const Entry* e = t.entries + row[m];
        const Entry* end = t.entries + row[m + 1];
        const int64_t f = t.first[m], l = t.last[m];
        if (e == end && k != f && k != l) continue;
        float* acc = t.acc + (m - t.m0) * kTile;
        const float* init = k == f ? nullptr : acc;
        const bool fin = k == l;
        float* plane = t.out + m * t.out_plane;
        float* dst = !fin ? acc : direct ? plane + p : tmp;
        if (cnt == kTile)
          tile_full<V::kNV>(base, e, end, init, t.bias[m], fin && t.relu, dst, V::W);
        else if (t.guarded)
          tile_full_dispatch<V::kNV>(nv, base, e, end, init, t.bias[m], fin && t.relu, dst,
                                     !fin || !direct ? V::W : last);
        else
          tile_short_dispatch<V::kNV>(nv, base, e, end, init, t.bias[m], fin && t.relu, dst, last, !fin || !direct);
        if (fin && !direct) scatter_rows(tmp, p, cnt, plane, t.Wf, t.OW);
      }
    }
  }
}
