//! The Whatsminer v2 write API's cryptography: md5crypt (`$1$`) and AES-256-ECB with zero padding.
//!
//! Written here from the published algorithms (Poul-Henning Kamp's md5crypt, FIPS-197) so that the
//! emulator needs no crypto crate the drivers might share; tests check both against known vectors.

use md5::{Digest, Md5};

const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// md5crypt of `password` with `salt` (at most 8 characters are used): `$1$<salt>$<hash>`.
pub(crate) fn md5crypt(password: &[u8], salt: &str) -> String {
    let salt: &[u8] = &salt.as_bytes()[..salt.len().min(8)];
    let alt = {
        let mut h = Md5::new();
        h.update(password);
        h.update(salt);
        h.update(password);
        h.finalize()
    };
    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(b"$1$");
    ctx.update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update([password.first().copied().unwrap_or(0)]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password);
        } else {
            c.update(fin);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round & 1 == 1 {
            c.update(fin);
        } else {
            c.update(password);
        }
        fin = c.finalize();
    }
    let mut out = String::with_capacity(34);
    out.push_str("$1$");
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let mut to64 = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(char::from(ITOA64[(v & 0x3f) as usize]));
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        to64(
            (u32::from(fin[a]) << 16) | (u32::from(fin[b]) << 8) | u32::from(fin[c]),
            4,
        );
    }
    to64(u32::from(fin[11]), 2);
    out
}

/// The hash part of an md5crypt string (what follows the third `$`).
pub(crate) fn md5crypt_hash(password: &[u8], salt: &str) -> String {
    md5crypt(password, salt)
        .rsplit('$')
        .next()
        .unwrap_or("")
        .to_owned()
}

const fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        let hi = a & 0x80;
        a <<= 1;
        if hi != 0 {
            a ^= 0x1b;
        }
        b >>= 1;
    }
    p
}

const fn make_sbox() -> [u8; 256] {
    let mut sbox = [0u8; 256];
    let mut x = 0usize;
    while x < 256 {
        // inverse in GF(2^8): x^254
        let mut inv = 1u8;
        let mut k = 0;
        while k < 254 {
            inv = gf_mul(inv, x as u8);
            k += 1;
        }
        if x == 0 {
            inv = 0;
        }
        let s = inv
            ^ inv.rotate_left(1)
            ^ inv.rotate_left(2)
            ^ inv.rotate_left(3)
            ^ inv.rotate_left(4)
            ^ 0x63;
        sbox[x] = s;
        x += 1;
    }
    sbox
}

const fn make_inv(sbox: &[u8; 256]) -> [u8; 256] {
    let mut inv = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        inv[sbox[i] as usize] = i as u8;
        i += 1;
    }
    inv
}

static SBOX: [u8; 256] = make_sbox();
static INV_SBOX: [u8; 256] = make_inv(&SBOX);

/// AES-256 with its expanded key (15 round keys).
pub(crate) struct Aes256 {
    round_keys: [[u8; 16]; 15],
}

impl Aes256 {
    pub(crate) fn new(key: &[u8; 32]) -> Aes256 {
        let mut w = [[0u8; 4]; 60];
        for (i, word) in w.iter_mut().take(8).enumerate() {
            word.copy_from_slice(&key[4 * i..4 * i + 4]);
        }
        let mut rcon = 1u8;
        for i in 8..60 {
            let mut t = w[i - 1];
            if i % 8 == 0 {
                t = [
                    SBOX[t[1] as usize] ^ rcon,
                    SBOX[t[2] as usize],
                    SBOX[t[3] as usize],
                    SBOX[t[0] as usize],
                ];
                rcon = gf_mul(rcon, 2);
            } else if i % 8 == 4 {
                t = t.map(|b| SBOX[b as usize]);
            }
            for j in 0..4 {
                w[i][j] = w[i - 8][j] ^ t[j];
            }
        }
        let mut round_keys = [[0u8; 16]; 15];
        for (k, rk) in round_keys.iter_mut().enumerate() {
            for c in 0..4 {
                rk[4 * c..4 * c + 4].copy_from_slice(&w[4 * k + c]);
            }
        }
        Aes256 { round_keys }
    }

    fn add(state: &mut [u8; 16], rk: &[u8; 16]) {
        state.iter_mut().zip(rk).for_each(|(s, k)| *s ^= k);
    }

    pub(crate) fn encrypt_block(&self, block: &mut [u8; 16]) {
        Self::add(block, &self.round_keys[0]);
        for round in 1..15 {
            let mut s = [0u8; 16];
            for c in 0..4 {
                for r in 0..4 {
                    s[r + 4 * c] = SBOX[block[r + 4 * ((c + r) % 4)] as usize];
                }
            }
            if round < 14 {
                for c in 0..4 {
                    let a = [s[4 * c], s[4 * c + 1], s[4 * c + 2], s[4 * c + 3]];
                    s[4 * c] = gf_mul(a[0], 2) ^ gf_mul(a[1], 3) ^ a[2] ^ a[3];
                    s[4 * c + 1] = a[0] ^ gf_mul(a[1], 2) ^ gf_mul(a[2], 3) ^ a[3];
                    s[4 * c + 2] = a[0] ^ a[1] ^ gf_mul(a[2], 2) ^ gf_mul(a[3], 3);
                    s[4 * c + 3] = gf_mul(a[0], 3) ^ a[1] ^ a[2] ^ gf_mul(a[3], 2);
                }
            }
            Self::add(&mut s, &self.round_keys[round]);
            *block = s;
        }
    }

    pub(crate) fn decrypt_block(&self, block: &mut [u8; 16]) {
        Self::add(block, &self.round_keys[14]);
        for round in (0..14).rev() {
            let mut s = [0u8; 16];
            for c in 0..4 {
                for r in 0..4 {
                    s[r + 4 * ((c + r) % 4)] = INV_SBOX[block[r + 4 * c] as usize];
                }
            }
            Self::add(&mut s, &self.round_keys[round]);
            if round > 0 {
                for c in 0..4 {
                    let a = [s[4 * c], s[4 * c + 1], s[4 * c + 2], s[4 * c + 3]];
                    let m = |x: [u8; 4]| {
                        gf_mul(a[0], x[0])
                            ^ gf_mul(a[1], x[1])
                            ^ gf_mul(a[2], x[2])
                            ^ gf_mul(a[3], x[3])
                    };
                    s[4 * c] = m([14, 11, 13, 9]);
                    s[4 * c + 1] = m([9, 14, 11, 13]);
                    s[4 * c + 2] = m([13, 9, 14, 11]);
                    s[4 * c + 3] = m([11, 13, 9, 14]);
                }
            }
            *block = s;
        }
    }

    /// ECB-encrypt `data`, zero-padded to a multiple of 16 bytes.
    pub(crate) fn encrypt_ecb(&self, data: &[u8]) -> Vec<u8> {
        let mut out = data.to_vec();
        out.resize(data.len().div_ceil(16).max(1) * 16, 0);
        for chunk in out.chunks_exact_mut(16) {
            let mut b = [0u8; 16];
            b.copy_from_slice(chunk);
            self.encrypt_block(&mut b);
            chunk.copy_from_slice(&b);
        }
        out
    }

    /// ECB-decrypt `data` (a trailing partial block is dropped) and strip the zero padding.
    pub(crate) fn decrypt_ecb(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        for chunk in data.chunks_exact(16) {
            let mut b = [0u8; 16];
            b.copy_from_slice(chunk);
            self.decrypt_block(&mut b);
            out.extend_from_slice(&b);
        }
        while out.last() == Some(&0) {
            out.pop();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes256_matches_fips197() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let aes = Aes256::new(&key);
        let mut block: [u8; 16] = hex::decode("00112233445566778899aabbccddeeff")
            .unwrap()
            .try_into()
            .unwrap();
        aes.encrypt_block(&mut block);
        assert_eq!(hex::encode(block), "8ea2b7ca516745bfeafc49904b496089");
        aes.decrypt_block(&mut block);
        assert_eq!(hex::encode(block), "00112233445566778899aabbccddeeff");
        let round = aes.decrypt_ecb(&aes.encrypt_ecb(b"{\"cmd\":\"power_off\"}"));
        assert_eq!(round, b"{\"cmd\":\"power_off\"}");
    }

    #[test]
    fn md5crypt_matches_known_hashes() {
        // Reference values computed with passlib's md5_crypt.
        assert_eq!(
            md5crypt(b"password", "saltsalt"),
            "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/"
        );
        assert_eq!(
            md5crypt(b"admin", "BQ5hoXV9"),
            "$1$BQ5hoXV9$RxmaDUO33TS7O26yeMHZ81"
        );
    }
}
