//! Fuzzes the agent's TOML configuration (`pivot-agent run --config`): any text must give a
//! configuration or an error naming the file (never a panic), and a configuration's miner
//! entries (addresses, IP ranges up to 65,536 addresses, dialects, credentials) must expand to
//! targets or an error. Build and run as docs/fuzzing.md says (`--bin agent_config`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pivot_agent::config::{Config, EnvSource};

struct NoEnv;

impl EnvSource for NoEnv {
    fn get(&self, _: &str) -> Option<String> {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    match Config::parse(text, path, &NoEnv) {
        Ok(c) => {
            let _ = c.miner_targets(path);
            let _ = (c.poll.miner_interval(), c.poll.gpu_interval(), c.poll.timeout());
        }
        Err(e) => assert!(e.to_string().contains("fuzz.toml"), "{e}"),
    }
});
