//! Fuzzes the controller's TOML configuration (`pivot-controller serve --config`): any text must
//! give a configuration or an error naming the file (never a panic), and environment overrides
//! must not change that. Build and run as docs/fuzzing.md says (`--bin controller_config`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pivot_controller::config::{Config, EnvSource};

/// The fuzzer's environment: the overrides `serve` reads, with odd values.
struct Env;

impl EnvSource for Env {
    fn get(&self, key: &str) -> Option<String> {
        match key {
            "PIVOT_LISTEN_GRPC" => Some("127.0.0.1:0".into()),
            _ => None,
        }
    }
}

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
    for env in [&NoEnv as &dyn EnvSource, &Env] {
        match Config::parse(text, path, env) {
            Ok(c) => {
                let _ = c.agents.assumptions();
                let _ = c.engine.validate();
            }
            Err(e) => assert!(e.to_string().contains("fuzz.toml"), "{e}"),
        }
    }
});
