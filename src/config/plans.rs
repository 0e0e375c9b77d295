//! `[plans.<name>.quotas.<operation>]` (contract addendum 2, "Plans"): per-session quota
//! tiers, read as overrides of the policies' allowances and stored on each policy
//! ([`Policy::plans`]). Runs after `[quotas.*]`, whose policies it overrides.
//!
//! An override either redefines the allowance whole (`limit` and `window`, or `rate`,
//! `period` and `burst`) or changes its size only (`limit` for a window, `burst` for a token
//! bucket), and may set `cost`. A plan never changes what a policy counts (`counter`) or
//! whether it enforces (`mode`): those are the operation's, whatever the tier.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::error::ConfigError;
use super::file::{PlanFile, PolicyFile};
use super::parse;
use crate::model::quota::{Allowance, Policy, Window};

/// Adds every plan's overrides to `policies`; returns the plan names, in order.
pub(super) fn apply(
    policies: &mut [Policy],
    plans: BTreeMap<String, PlanFile>,
) -> Result<Vec<Arc<str>>, ConfigError> {
    let mut names = Vec::with_capacity(plans.len());
    for (plan, file) in plans {
        if !parse::is_name(&plan) {
            return Err(ConfigError::new(
                format!("plans.{plan}"),
                "plan names are 1-64 characters of a-z, 0-9, '_' and '-'",
            ));
        }
        let plan: Arc<str> = Arc::from(plan);
        for (operation, overrides) in file.quotas {
            let name = format!("plans.{plan}.quotas.{operation}");
            let Some(index) = policies.iter().position(|p| p.operation == operation) else {
                let known: Vec<&str> = policies.iter().map(|p| p.operation.as_str()).collect();
                return Err(ConfigError::new(
                    name,
                    format!("no such operation; [quotas.*] has {}", known.join(", ")),
                ));
            };
            let policy = &mut policies[index];
            for (key, given) in [
                ("counter", overrides.counter.is_some()),
                ("mode", overrides.mode.is_some()),
            ] {
                if given {
                    return Err(ConfigError::new(
                        format!("{name}.{key}"),
                        format!("is the operation's, set in [quotas.{operation}], not a plan's"),
                    ));
                }
            }
            let allowance = overridden(&name, &policy.allowance, &overrides)?;
            policy.plans.push((plan.clone(), allowance));
        }
        names.push(plan);
    }
    Ok(names)
}

/// `base` with a plan's `overrides` applied.
fn overridden(
    name: &str,
    base: &Allowance,
    overrides: &PolicyFile,
) -> Result<Allowance, ConfigError> {
    let redefines =
        overrides.window.is_some() || overrides.rate.is_some() || overrides.period.is_some();
    if redefines {
        return parse::allowance(name, overrides, base.default_cost);
    }
    let mut allowance = *base;
    let bucket = matches!(base.window, Window::Gcra { .. });
    match (bucket, overrides.limit, overrides.burst) {
        (false, Some(limit), None) | (true, None, Some(limit)) => allowance.limit = limit,
        (_, None, None) => {}
        (true, Some(_), _) => {
            return Err(ConfigError::new(
                format!("{name}.limit"),
                "the policy is a token bucket: override burst, or give rate + period + burst",
            ))
        }
        (false, _, Some(_)) => {
            return Err(ConfigError::new(
                format!("{name}.burst"),
                "the policy has a window: override limit, or give limit + window",
            ))
        }
    }
    if let Some(cost) = overrides.cost {
        allowance.default_cost = cost;
    }
    parse::check_allowance(name, &allowance)?;
    Ok(allowance)
}
