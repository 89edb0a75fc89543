//! (being written)

use anyhow::{Result, bail};

use crate::{Opts, report::Section};

pub fn run(_opts: &Opts) -> Result<Section> {
    bail!("not written yet")
}
