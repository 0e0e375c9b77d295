//! The quota functions of one configuration: `consume.lua` and `refund.lua` for each policy,
//! with the policy written into their library as Lua literals (the constants `quota_lib.lua`
//! names). Every argument a call sends costs Redis about as much as a short command, and the
//! gateway about as much to encode, while a policy changes only with the configuration: a
//! reload builds new functions, in libraries of new names, which Redis loads on first use.

use std::fmt::Write;
use std::sync::Arc;

use super::keys::{counter_field, quota_field};
use super::lua::{self, Lua};
use crate::model::quota::{Policy, Window};

/// One policy's consume and refund functions.
pub(super) struct PolicyScripts {
    pub consume: Lua,
    pub refund: Lua,
}

impl PolicyScripts {
    /// `policy`'s functions, reporting `counters` (in order); `session_lib` is
    /// `session_lib.lua` with the deployment's settings in front.
    pub fn of(policy: &Policy, counters: &[Arc<str>], session_lib: &str) -> PolicyScripts {
        let library = format!(
            "{session_lib}\n{}{}",
            prelude(policy, counters),
            include_str!("quota_lib.lua")
        );
        let function =
            |op, body| Lua::new(op, &library, &format!("quota_call(KEYS, ARGV)\n{body}"));
        PolicyScripts {
            consume: function("consume", include_str!("consume.lua")),
            refund: function("refund", include_str!("refund.lua")),
        }
    }
}

/// FIELD, FEEDS, COUNTER_FIELDS and ALLOWANCES of `quota_lib.lua`.
fn prelude(policy: &Policy, counters: &[Arc<str>]) -> String {
    let feeds = policy.counter.as_ref().and_then(|counter| {
        counters
            .iter()
            .position(|name| name == counter)
            .map(|index| index + 1)
    });
    let mut prelude = format!(
        "local FIELD, FEEDS = {}, {}\nlocal COUNTER_FIELDS = {{",
        lua::string(&quota_field(&policy.operation)),
        feeds.unwrap_or(0)
    );
    for counter in counters {
        prelude.push_str(&lua::string(&counter_field(counter)));
        prelude.push_str(", ");
    }
    prelude.push_str("}\nlocal ALLOWANCES = {\n");
    let plans = policy.plans.iter().map(|(name, a)| (&**name, a));
    for (plan, allowance) in std::iter::once(("", &policy.allowance)).chain(plans) {
        let (kind, param) = match allowance.window {
            Window::Calendar(unit) => ("calendar", lua::string(unit.as_str())),
            Window::Rolling(length) => ("rolling", length.as_secs().to_string()),
            Window::Gcra { interval } => ("gcra", interval.as_millis().to_string()),
        };
        let _ = writeln!(
            prelude,
            "  {}, '{kind}', {param}, {}, {},",
            lua::string(plan),
            allowance.limit,
            allowance.default_cost
        );
    }
    prelude.push_str("}\n");
    prelude
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::quota::{Allowance, CalendarUnit};

    #[test]
    fn a_policy_is_written_as_literals() {
        let policy = Policy {
            counter: Some("images_rendered".into()),
            plans: vec![(
                "pro".into(),
                Allowance {
                    limit: 100,
                    window: Window::Rolling(Duration::from_secs(3600)),
                    default_cost: 2,
                },
            )],
            ..Policy::new("render", 10, Window::Calendar(CalendarUnit::Month))
        };
        let counters: Vec<Arc<str>> = vec!["concepts_generated".into(), "images_rendered".into()];
        assert_eq!(
            prelude(&policy, &counters),
            "local FIELD, FEEDS = 'q:render', 2\n\
             local COUNTER_FIELDS = {'g', 'u:images_rendered', }\n\
             local ALLOWANCES = {\n  '', 'calendar', 'month', 10, 1,\n  'pro', 'rolling', 3600, 100, 2,\n}\n"
        );
    }
}
