// numpy.random.default_rng(seed) for the calls the zoom-in window prompts make
// (segvol_rt.pipeline.prompts.select_points): Generator(PCG64(SeedSequence(seed)))
// with integers(n) (Lemire's bounded draw) and permutation(n) (Fisher-Yates
// with random_interval), reproduced draw for draw so that the sampled window
// points equal the Python runtime's.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <vector>

namespace segvol::detail {

class NumpyGenerator {
   public:
    explicit NumpyGenerator(uint64_t seed) {
        std::vector<uint32_t> entropy;
        if (seed == 0) entropy.push_back(0);
        while (seed) {
            entropy.push_back((uint32_t)(seed & 0xffffffffu));
            seed >>= 32;
        }
        uint32_t pool[4];
        mix_entropy(pool, entropy);
        uint32_t words[8];
        uint32_t hash = 0x8b51f9ddu;  // INIT_B
        for (int i = 0; i < 8; ++i) {
            uint32_t v = pool[i % 4];
            v ^= hash;
            hash *= 0x58f38dedu;  // MULT_B
            v *= hash;
            v ^= v >> 16;
            words[i] = v;
        }
        uint64_t val[4];
        for (int i = 0; i < 4; ++i) val[i] = (uint64_t)words[2 * i] | ((uint64_t)words[2 * i + 1] << 32);
        unsigned __int128 init = ((unsigned __int128)val[0] << 64) | val[1];
        unsigned __int128 seq = ((unsigned __int128)val[2] << 64) | val[3];
        state_ = 0;
        inc_ = (seq << 1) | 1;
        step();
        state_ += init;
        step();
    }

    uint64_t next64() {
        step();
        uint64_t x = (uint64_t)(state_ >> 64) ^ (uint64_t)state_;
        unsigned rot = (unsigned)(state_ >> 122);
        return (x >> rot) | (x << ((-rot) & 63));
    }

    uint32_t next32() {
        if (has32_) {
            has32_ = false;
            return buffered_;
        }
        uint64_t n = next64();
        has32_ = true;
        buffered_ = (uint32_t)(n >> 32);
        return (uint32_t)(n & 0xffffffffu);
    }

    // Generator.integers(n) (int64, exclusive high), n >= 1.
    int64_t integers(int64_t n) {
        uint64_t rng = (uint64_t)(n - 1);
        if (rng == 0) return 0;
        if (rng > 0xffffffffull) throw std::invalid_argument("integers: range beyond 32 bits not supported");
        if (rng == 0xffffffffull) return (int64_t)next32();
        uint32_t excl = (uint32_t)rng + 1u;
        uint64_t m = (uint64_t)next32() * excl;
        uint32_t left = (uint32_t)m;
        if (left < excl) {
            uint32_t threshold = (uint32_t)(UINT32_MAX - (uint32_t)rng) % excl;
            while (left < threshold) {
                m = (uint64_t)next32() * excl;
                left = (uint32_t)m;
            }
        }
        return (int64_t)(m >> 32);
    }

    // Generator.permutation(n) of arange(n).
    std::vector<int64_t> permutation(int64_t n) {
        std::vector<int64_t> a((size_t)n);
        for (int64_t i = 0; i < n; ++i) a[(size_t)i] = i;
        for (int64_t i = n - 1; i >= 1; --i) {
            int64_t j = (int64_t)interval((uint64_t)i);
            std::swap(a[(size_t)i], a[(size_t)j]);
        }
        return a;
    }

   private:
    unsigned __int128 state_ = 0, inc_ = 0;
    bool has32_ = false;
    uint32_t buffered_ = 0;

    void step() {
        const unsigned __int128 mult =
            ((unsigned __int128)0x2360ED051FC65DA4ull << 64) | (unsigned __int128)0x4385DF649FCCF645ull;
        state_ = state_ * mult + inc_;
    }

    uint64_t interval(uint64_t max) {
        if (max == 0) return 0;
        uint64_t mask = max;
        for (int s : {1, 2, 4, 8, 16, 32}) mask |= mask >> s;
        uint64_t v;
        if (max <= 0xffffffffull) {
            while ((v = (next32() & mask)) > max) {
            }
        } else {
            while ((v = (next64() & mask)) > max) {
            }
        }
        return v;
    }

    static uint32_t hashmix(uint32_t value, uint32_t& hash) {
        value ^= hash;
        hash *= 0x931e8875u;  // MULT_A
        value *= hash;
        value ^= value >> 16;
        return value;
    }
    static uint32_t mix(uint32_t x, uint32_t y) {
        uint32_t r = 0xca01f9ddu * x - 0x4973f715u * y;
        r ^= r >> 16;
        return r;
    }
    static void mix_entropy(uint32_t pool[4], const std::vector<uint32_t>& e) {
        uint32_t hash = 0x43b0d7e5u;  // INIT_A
        for (size_t i = 0; i < 4; ++i) pool[i] = hashmix(i < e.size() ? e[i] : 0u, hash);
        for (size_t s = 0; s < 4; ++s)
            for (size_t d = 0; d < 4; ++d)
                if (s != d) pool[d] = mix(pool[d], hashmix(pool[s], hash));
        for (size_t s = 4; s < e.size(); ++s)
            for (size_t d = 0; d < 4; ++d) pool[d] = mix(pool[d], hashmix(e[s], hash));
    }
};

}  // namespace segvol::detail
