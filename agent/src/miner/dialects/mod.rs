//! One module per firmware dialect, each implementing [`super::MinerDriver`].

pub mod antminer;
pub mod bitaxe;
pub mod braiins;
pub mod common;
pub mod luxos;
#[cfg(test)]
pub(crate) mod test_wire;
pub mod whatsminer_v2;
pub mod whatsminer_v3;
pub mod wm_crypto;
