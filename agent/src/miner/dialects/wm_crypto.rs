//! The cryptography of Whatsminer API v2's write commands and v3's tokens (PROTOCOLS.md; checked
//! against pyasic's rpc/btminer.py): md5crypt ("$1$"), AES-256-ECB with zero padding, and the v3
//! SHA-256 token.

use aes::Aes256;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use md5::{Digest as _, Md5};
use sha2::Sha256;

const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The hash part of `md5crypt(password, salt)` — what follows `$1$<salt>$`. The salt is cut at
/// its first `$` and at 8 characters, as md5crypt does.
pub fn md5crypt_hash(password: &[u8], salt: &[u8]) -> String {
    let salt = salt.split(|b| *b == b'$').next().unwrap_or_default();
    let salt = &salt[..salt.len().min(8)];
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
    while i != 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
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
    let f = fin;
    let mut out = String::with_capacity(22);
    let mut to64 = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        to64(
            (u32::from(f[a]) << 16) | (u32::from(f[b]) << 8) | u32::from(f[c]),
            4,
        );
    }
    to64(u32::from(f[11]), 2);
    out
}

/// A Whatsminer v2 write token, derived from `get_token`'s time, salt and newsalt.
#[derive(Clone)]
pub struct V2Token {
    /// md5crypt(password, salt): the AES key material.
    pub key: String,
    /// md5crypt(key + time, newsalt): sent as `token` inside the encrypted command.
    pub sign: String,
}

impl std::fmt::Debug for V2Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("V2Token(<redacted>)")
    }
}

impl V2Token {
    pub fn derive(password: &str, time: &str, salt: &str, newsalt: &str) -> Self {
        Self::with_key(
            md5crypt_hash(password.as_bytes(), salt.as_bytes()),
            time,
            newsalt,
        )
    }

    /// A token from a key already derived for this miner's salt (it depends only on the
    /// password and the salt, which btminer keeps from token to token): only the sign is new.
    pub fn with_key(key: String, time: &str, newsalt: &str) -> Self {
        let sign = md5crypt_hash(format!("{key}{time}").as_bytes(), newsalt.as_bytes());
        Self { key, sign }
    }

    fn cipher(&self) -> Aes256 {
        let k = Sha256::digest(self.key.as_bytes());
        Aes256::new(&k)
    }

    /// `{"enc":1,"data":base64(AES-256-ECB(json, zero padded))}`.
    pub fn encrypt(&self, plaintext: &str) -> String {
        let cipher = self.cipher();
        let mut data = plaintext.as_bytes().to_vec();
        let padded = data.len().div_ceil(16).max(1) * 16;
        data.resize(padded, 0);
        for chunk in data.chunks_mut(16) {
            cipher.encrypt_block(GenericArray::from_mut_slice(chunk));
        }
        B64.encode(data)
    }

    /// Decrypts an `enc` reply body; `None` when it is not valid base64 of whole blocks.
    pub fn decrypt(&self, b64: &str) -> Option<Vec<u8>> {
        let cleaned: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
        let mut data = B64.decode(cleaned).ok()?;
        if data.is_empty() || data.len() % 16 != 0 {
            return None;
        }
        let cipher = self.cipher();
        for chunk in data.chunks_mut(16) {
            cipher.decrypt_block(GenericArray::from_mut_slice(chunk));
        }
        while data.last() == Some(&0) {
            data.pop();
        }
        Some(data)
    }
}

/// Whatsminer API v3 token: the first 8 characters of base64(SHA-256(cmd + password + salt + ts)).
pub fn v3_token(command: &str, password: &str, salt: &str, ts: i64) -> String {
    let digest = Sha256::digest(format!("{command}{password}{salt}{ts}").as_bytes());
    B64.encode(digest).chars().take(8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn md5crypt_matches_reference_vectors() {
        // Produced with passlib's md5_crypt (the implementation pyasic uses).
        assert_eq!(
            md5crypt_hash(b"password", b"saltsalt"),
            "qjXMvbEw8oaL.CzflDtaK/"
        );
        assert_eq!(
            md5crypt_hash(b"admin", b"BQ5hoXV9"),
            "RxmaDUO33TS7O26yeMHZ81"
        );
        assert_eq!(md5crypt_hash(b"", b"abc"), "Or2rbeUYTvt12aiVzMuS/.");
        assert_eq!(md5crypt_hash(&[b'a'; 40], b"x"), "DHmq9bsdPDY1rhlu8Qzct.");
    }

    #[test]
    fn v2_token_and_encryption_match_pyasic() {
        // pyasic rpc/btminer.py get_token + create_privileged_cmd with the same inputs.
        let t = V2Token::derive("admin", "8589", "BQ5hoXV9", "jbzkfQls");
        assert_eq!(t.key, "RxmaDUO33TS7O26yeMHZ81");
        assert_eq!(t.sign, "D/EwL8.VLD/iO4JLBpwC4.");
        // A next token with the same salt: the key kept, the sign new, as derived afresh.
        let next = V2Token::with_key(t.key.clone(), "8650", "Qx3bGk2a");
        let afresh = V2Token::derive("admin", "8650", "BQ5hoXV9", "Qx3bGk2a");
        assert_eq!((next.key, next.sign), (afresh.key, afresh.sign));
        let plain =
            r#"{"cmd": "power_off", "respbefore": "true", "token": "D/EwL8.VLD/iO4JLBpwC4."}"#;
        let enc = t.encrypt(plain);
        assert_eq!(
            enc,
            "YJracrWpLn2XvqWuNiNqyg70K64pfivIJhwE32DXNCeyv4iYIDyJ6mJuwbGpytIyLZsqYhIpyW1kmTECpky54ywaYrPRZKevPMwDiA5K8PI="
        );
        assert_eq!(t.decrypt(&enc).unwrap(), plain.as_bytes());
        assert!(!format!("{t:?}").contains("Rxma"));
    }

    #[test]
    fn v3_token_is_eight_base64_chars() {
        let tok = v3_token("set.miner.service", "super", "abc", 1_700_000_000);
        assert_eq!(tok.len(), 8);
    }

    proptest! {
        #[test]
        fn decrypt_never_panics(s in ".{0,300}") {
            let t = V2Token::derive("admin", "1", "s", "n");
            let _ = t.decrypt(&s);
        }
    }
}
