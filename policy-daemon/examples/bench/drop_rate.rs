//! Drop rate on a veth pair (being written).

use anyhow::{Result, bail};

use crate::{Opts, report::Section};

pub fn run(_opts: &Opts) -> Result<Section> {
    bail!("the drop-rate benchmark is not written yet")
}
