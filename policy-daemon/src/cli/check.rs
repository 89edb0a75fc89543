//! `xdp-policy check`: validates policy files as `run` reads them, without the kernel.

use super::{CheckArgs, CliError};
use crate::{
    reload::files,
    render,
    safety::{self, Host},
    settings,
};

/// Prints each policy's rules, its warnings, and why it is invalid or would lock SSH
/// out; fails if any is.
pub fn check(args: &CheckArgs) -> Result<(), CliError> {
    let options =
        settings::policy_load_options(args.config.as_deref(), args.allow_insecure_policy_files)?;
    let mut invalid = 0;
    for path in &args.paths {
        match files::load(path, options) {
            Ok(policy) => {
                print!("{}", render::describe_policy(&policy, &path.display().to_string()));
                for w in &policy.warnings {
                    eprint!("warning: {w}");
                }
                if policy.rules.is_empty() {
                    eprintln!(
                        "warning: {}: the policy has no rules: every packet gets the default \
                         action",
                        path.display()
                    );
                }
                // The interfaces the policy names, or every one: where it may be enforced.
                let host = Host::probe(&policy.interfaces);
                if let Err(lockout) = safety::check(&policy, &host) {
                    eprintln!("{}: {lockout}", path.display());
                    invalid += 1;
                }
            }
            Err(e) => {
                eprintln!("{e}");
                invalid += 1;
            }
        }
    }
    if invalid == 0 { Ok(()) } else { Err(CliError::InvalidPolicies(invalid, args.paths.len())) }
}
