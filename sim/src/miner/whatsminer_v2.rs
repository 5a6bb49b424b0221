//! whatsminer_v2 dialect (being written).

use serde_json::Value;

use super::cgminer::{Request, invalid_command};
use super::state::Core;

pub(crate) fn api(core: &Core, _req: &Request) -> Value {
    invalid_command(core)
}
