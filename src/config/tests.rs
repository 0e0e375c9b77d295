//! Configuration: every source, every error naming its setting.

use super::*;
use crate::model::quota::{CalendarUnit, Mode, Window};

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_follow_the_contract() {
    let config = Config::from_vars(&HashMap::new()).expect("defaults are valid");
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(config.redis_timeout, Duration::from_millis(250));
    assert_eq!(config.body_limit, 16 * 1024);
    assert_eq!(config.cookie.max_age.as_secs(), 2_592_000);
    assert!(!config.cookie.secure);
}

#[test]
fn production_turns_secure_cookies_on() {
    let config = Config::from_vars(&vars(&[("SESSIONGATE_ENV", "production")])).expect("valid");
    assert!(config.cookie.secure);
    assert_eq!(config.log_format, LogFormat::Json);
}

#[test]
fn errors_name_the_setting() {
    let err = Config::from_vars(&vars(&[("SESSIONGATE_LISTEN", "nowhere")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: SESSIONGATE_LISTEN: \"nowhere\" is not an address of the form ip:port"
    );
    let links = vars(&[
        ("SESSIONGATE_PORT", "tcp://10.0.0.1:8080"),
        ("SESSIONGATE_SERVICE_HOST", "10.0.0.1"),
    ]);
    assert!(
        Config::from_vars(&links).is_ok(),
        "Kubernetes service links are not settings"
    );
    let err = Config::from_vars(&vars(&[("SESSIONGATE_LSITEN", "x")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: SESSIONGATE_LSITEN: unknown setting"
    );
    let err = Config::from_vars(&vars(&[("REDIS_URL", "http://x")])).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid configuration: REDIS_URL:"),
        "{err}"
    );
    let err = Config::from_vars(&vars(&[("SESSIONGATE_LOG_FORMAT", "xml")])).unwrap_err();
    assert!(err.to_string().contains("SESSIONGATE_LOG_FORMAT"), "{err}");
    let err = Config::from_vars(&vars(&[("SESSIONGATE_REDIS_TIMEOUT_MS", "0")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: SESSIONGATE_REDIS_TIMEOUT_MS: expected a whole number of \
         milliseconds from 1 to 60000, got \"0\""
    );
}

#[test]
fn toml_file_is_read_and_environment_wins() {
    let config = Config::from_toml("listen = \"0.0.0.0:1234\"\n[cookie]\nsame_site = \"strict\"\n")
        .expect("valid");
    assert_eq!(config.listen.to_string(), "0.0.0.0:1234");
    assert_eq!(config.cookie.same_site, cookie::SameSite::Strict);

    let dir = std::env::temp_dir().join(format!("sessiongate-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        "listen = \"0.0.0.0:1234\"\n[redis]\ntimeout_ms = 100\n",
    )
    .expect("write");
    let path = path.to_string_lossy().to_string();
    let config = Config::from_vars(&vars(&[
        ("SESSIONGATE_CONFIG", &path),
        ("SESSIONGATE_LISTEN", "127.0.0.1:5555"),
    ]))
    .expect("valid");
    assert_eq!(config.listen.to_string(), "127.0.0.1:5555");
    assert_eq!(config.redis_timeout, Duration::from_millis(100));
}

#[test]
fn quota_policies_parse_and_replace_the_defaults() {
    let config = Config::from_toml(
        r#"
        [quotas.concept_generation]
        limit = 5
        window = "day"
        counter = "concepts_generated"
        [quotas.api-burst]
        rate = 10
        period = "1 second"
        burst = 20
        cost = 2
        "#,
    )
    .expect("valid");
    assert_eq!(config.policies.len(), 2);
    let burst = &config.policies[0];
    assert_eq!(burst.operation, "api-burst");
    assert_eq!(
        burst.allowance.window,
        Window::Gcra {
            interval: Duration::from_millis(100)
        }
    );
    assert_eq!(
        (
            burst.allowance.limit,
            burst.allowance.default_cost,
            burst.counter.clone()
        ),
        (20, 2, None)
    );
    assert_eq!(
        config.policies[1].counter.as_deref(),
        Some("concepts_generated")
    );

    for (toml, message) in [
        ("[quotas.x]\nlimit = 5\n", "give either"),
        (
            "[quotas.x]\nlimit = 5\nwindow = \"week\"\n",
            "quotas.x.window",
        ),
        (
            "[quotas.x]\nlimit = 0\nwindow = \"day\"\n",
            "quotas.x.limit",
        ),
        (
            "[quotas.X]\nlimit = 1\nwindow = \"day\"\n",
            "operation names",
        ),
        (
            "[quotas.x]\nlimit = 1\nwindow = \"day\"\ncounter = \"Clicks\"\n",
            "quotas.x.counter",
        ),
        (
            "[quotas.x]\nlimit = 1\nwindow = \"day\"\ncost = 2\n",
            "quotas.x.cost",
        ),
    ] {
        let err = Config::from_toml(toml).unwrap_err().to_string();
        assert!(err.contains(message), "{toml}: {err}");
    }
}

#[test]
fn plans_override_allowances_and_shadow_policies_parse() {
    let config = Config::from_toml(
        r#"
        [quotas.concept_generation]
        limit = 10
        window = "month"
        mode = "shadow"
        [quotas.api]
        rate = 10
        period = "1 second"
        burst = 20
        [plans.pro.quotas.concept_generation]
        limit = 100
        [plans.pro.quotas.api]
        burst = 50
        cost = 2
        [plans.team.quotas.concept_generation]
        limit = 1000
        window = "day"
        [plans.free]
        "#,
    )
    .expect("valid");
    let names: Vec<&str> = config.plans.iter().map(|p| &**p).collect();
    assert_eq!(names, ["free", "pro", "team"]);
    let api = &config.policies[0];
    let generation = &config.policies[1];
    assert_eq!(generation.mode, Mode::Shadow);
    assert_eq!(api.mode, Mode::Enforce);
    let pro = generation.allowance_on(Some("pro"));
    assert_eq!((pro.limit, pro.window), (100, generation.allowance.window));
    let team = generation.allowance_on(Some("team"));
    assert_eq!(
        (team.limit, team.window),
        (1000, Window::Calendar(CalendarUnit::Day))
    );
    let pro_api = api.allowance_on(Some("pro"));
    assert_eq!(
        (pro_api.limit, pro_api.default_cost, pro_api.window),
        (50, 2, api.allowance.window)
    );
    assert_eq!(api.allowance_on(Some("team")), &api.allowance);

    for (toml, message) in [
        (
            "[plans.pro.quotas.nope]\nlimit = 5\n",
            "plans.pro.quotas.nope: no such operation",
        ),
        (
            "[plans.Pro.quotas.concept_generation]\nlimit = 5\n",
            "plan names",
        ),
        (
            "[plans.pro.quotas.concept_generation]\nlimit = 0\n",
            "plans.pro.quotas.concept_generation.limit",
        ),
        (
            "[plans.pro.quotas.concept_generation]\nburst = 5\n",
            "plans.pro.quotas.concept_generation.burst",
        ),
        (
            "[plans.pro.quotas.concept_generation]\nwindow = \"fortnight\"\n",
            "plans.pro.quotas.concept_generation",
        ),
        (
            "[plans.pro.quotas.concept_generation]\ncounter = \"x\"\n",
            "plans.pro.quotas.concept_generation.counter",
        ),
        (
            "[plans.pro.quotas.concept_generation]\nlimit = 5\nextra = 1\n",
            "extra",
        ),
        ("[plans.pro]\nlimit = 5\n", "limit"),
        (
            "[quotas.x]\nlimit = 1\nwindow = \"day\"\nmode = \"strict\"\n",
            "quotas.x.mode",
        ),
    ] {
        let err = Config::from_toml(toml).unwrap_err().to_string();
        assert!(err.contains(message), "{toml}: {err}");
    }
}

#[test]
fn service_token_and_proxies_are_checked() {
    let err = Config::from_vars(&vars(&[("SESSIONGATE_SERVICE_TOKEN", "short")])).unwrap_err();
    assert!(
        err.to_string().contains("SESSIONGATE_SERVICE_TOKEN"),
        "{err}"
    );
    let config = Config::from_toml("[http]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]\n")
        .expect("valid");
    assert_eq!(config.trusted_proxies.len(), 2);
    assert!(Config::from_toml("[http]\ntrusted_proxies = [\"nope\"]\n").is_err());
}

#[test]
fn cors_origins_and_routes_are_checked() {
    let config = Config::from_toml(
        "internal_listen = \"127.0.0.1:8081\"\n[cors]\nallowed_origins = [\"https://app.example\", \"http://localhost:3000\"]\n",
    )
    .expect("valid");
    assert_eq!(config.cors.map(|c| c.allowed_origins.len()), Some(2));
    assert_eq!(config.internal_listen.map(|a| a.port()), Some(8081));
    for origin in [
        "*",
        "https://app.example/",
        "https://app.example/path",
        "app.example",
    ] {
        let error = Config::from_toml(&format!("[cors]\nallowed_origins = [\"{origin}\"]\n"))
            .expect_err(origin);
        assert!(
            error.to_string().contains("cors.allowed_origins"),
            "{error}"
        );
    }
    let error = Config::from_toml(
        "[[routes]]\npath = \"/a\"\nupstream = \"http://a:1\"\noperation = \"unknown\"\n",
    )
    .expect_err("unknown operation");
    assert!(error.to_string().contains("routes[0].operation"), "{error}");
}

#[test]
fn supabase_needs_a_url_and_a_key() {
    let config = Config::from_vars(&HashMap::new()).expect("valid");
    assert!(config.supabase.is_none());
    let config = Config::from_vars(&vars(&[
        ("SUPABASE_URL", "https://example.supabase.co/"),
        ("SUPABASE_SERVICE_ROLE_KEY", "secret"),
    ]))
    .expect("valid");
    let supabase = config.supabase.expect("configured");
    assert_eq!(supabase.rest_url, "https://example.supabase.co/rest/v1");
    let config = Config::from_vars(&vars(&[
        ("SUPABASE_URL", "https://ignored"),
        ("SUPABASE_REST_URL", "http://127.0.0.1:3000"),
        ("SUPABASE_SERVICE_ROLE_KEY", "secret"),
    ]))
    .expect("valid");
    assert_eq!(
        config.supabase.expect("configured").rest_url,
        "http://127.0.0.1:3000"
    );
    let err = Config::from_vars(&vars(&[("SUPABASE_URL", "https://x.supabase.co")])).unwrap_err();
    assert!(
        err.to_string().contains("SUPABASE_SERVICE_ROLE_KEY"),
        "{err}"
    );
    let err = Config::from_vars(&vars(&[
        ("SUPABASE_REST_URL", "x"),
        ("SUPABASE_SERVICE_ROLE_KEY", "k"),
    ]))
    .unwrap_err();
    assert!(err.to_string().contains("SUPABASE_REST_URL"), "{err}");
}

#[test]
fn gateway_hardening_settings_are_checked() {
    let config = Config::from_toml(
        "[http]\nmax_header_bytes = 16384\n[session]\ncreation_ipv6_prefix = 56\n\
         creation_ipv4_prefix = 24\nmax_creations_per_second = 50\n\
         [cookie]\nname = \"__Host-session\"\nsecure = true\n",
    )
    .expect("valid");
    assert_eq!(config.max_header_bytes, 16384);
    assert_eq!(config.creation_throttle.ipv6_prefix, 56);
    assert_eq!(config.creation_throttle.ipv4_prefix, 24);
    assert_eq!(config.creation_throttle.max_per_second.get(), 50);
    let defaults = Config::default();
    assert_eq!(defaults.max_header_bytes, 32 * 1024);
    assert_eq!(defaults.creation_throttle.ipv6_prefix, 64);
    assert_eq!(defaults.creation_throttle.ipv4_prefix, 32);
    for (toml, setting) in [
        ("[http]\nmax_header_bytes = 100\n", "http.max_header_bytes"),
        (
            "[session]\ncreation_ipv4_prefix = 33\n",
            "session.creation_ipv4_prefix",
        ),
        (
            "[session]\ncreation_ipv6_prefix = 0\n",
            "session.creation_ipv6_prefix",
        ),
        (
            "[session]\nmax_creations_per_second = 0\n",
            "session.max_creations_per_second",
        ),
        ("[cookie]\nname = \"__Host-s\"\n", "cookie.secure"),
        ("[cookie]\nname = \"__Secure-s\"\n", "cookie.secure"),
        (
            "[cookie]\nname = \"__Host-s\"\nsecure = true\npath = \"/app\"\n",
            "cookie.path",
        ),
        (
            "[cookie]\nname = \"__Host-s\"\nsecure = true\ndomain = \"example.com\"\n",
            "cookie.domain",
        ),
    ] {
        let err = Config::from_toml(toml).expect_err(toml);
        assert!(err.to_string().contains(setting), "{toml}: {err}");
    }
}

#[test]
fn unknown_toml_keys_are_refused() {
    let err = Config::from_toml("[redis]\nurll = \"redis://x\"\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: redis.urll: unknown key; known here: allow_eviction, \
         near_cache_entries, pool_size, shards, timeout_ms, url"
    );
    let err = Config::from_toml("lissen = \"127.0.0.1:1\"\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("lissen: unknown key; known here: admin_listen, cookie, cors, env,"),
        "{err}"
    );
    let err = Config::from_toml("redis = 5\n").unwrap_err();
    assert!(
        err.to_string().contains("redis: expected a table [redis]"),
        "{err}"
    );
    let err = Config::from_toml("[quotas.x]\nlimit = 1\nwindow = \"day\"\nlimt = 2\n").unwrap_err();
    assert!(
        err.to_string().contains("quotas: unknown field `limt`"),
        "{err}"
    );
    let err = Config::from_toml("[cookie]\nsame_site = \"none\"\n").unwrap_err();
    assert!(err.to_string().contains("cookie.same_site"), "{err}");
}

#[test]
fn errors_name_the_variable_or_the_key_that_was_set() {
    for (var, value) in [
        ("SESSIONGATE_REDIS_TIMEOUT_MS", "0"),
        ("SESSIONGATE_BODY_LIMIT_BYTES", "1"),
    ] {
        let err = Config::from_vars(&vars(&[(var, value)])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("invalid configuration: {var}: ")),
            "{err}"
        );
    }
    for (toml, key) in [
        ("[redis]\ntimeout_ms = 0\n", "redis.timeout_ms"),
        ("[http]\nbody_limit_bytes = 1\n", "http.body_limit_bytes"),
    ] {
        let err = Config::from_toml(toml).unwrap_err();
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn any_well_formed_counter_name_is_a_counter() {
    let config = Config::from_toml(
        "[quotas.render]\nlimit = 3\nwindow = \"day\"\ncounter = \"images_rendered\"\n",
    )
    .expect("a new counter is configuration only");
    assert_eq!(
        config.policies[0].counter.as_deref(),
        Some("images_rendered")
    );
}

#[test]
fn a_value_of_the_wrong_type_names_the_key_and_the_accepted_form() {
    for (toml, message) in [
        (
            "[redis]\ntimeout_ms = \"250\"\n",
            "redis.timeout_ms: expected a whole number of milliseconds from 1 to 60000, got \"250\"",
        ),
        (
            "[flush]\nenabled = \"yes\"\n",
            "flush.enabled: expected true or false, got \"yes\"",
        ),
        (
            "listen = 8080\n",
            "listen: expected an address of the form ip:port, got 8080",
        ),
        (
            "[http]\ntrusted_proxies = \"10.0.0.0/8\"\n",
            "http.trusted_proxies: expected a list of IP addresses or CIDR blocks",
        ),
        (
            "near_limit_fraction = 1.5\n",
            "near_limit_fraction: expected a number greater than 0 and at most 1, got 1.5",
        ),
        (
            "[redis]\npool_size = -1\n",
            "redis.pool_size: expected a whole number of connections from 1 to 64, got -1",
        ),
    ] {
        let err = Config::from_toml(toml).expect_err(toml).to_string();
        assert!(err.contains(message), "{toml}: {err}");
    }
}

#[test]
fn a_syntax_error_says_on_which_line() {
    for (toml, message) in [
        (
            "listen = \"127.0.0.1:1\"\n\n[redis]\nurl = \"redis://a\"\nurl = \"redis://b\"\n",
            "line 5: duplicate key",
        ),
        ("[redis]\ntimeout_ms = 1\n[http\n", "line 3: "),
    ] {
        let err = Config::from_toml(toml).expect_err(toml).to_string();
        assert!(err.contains(message), "{toml}: {err}");
    }
}

/// `[section]\nleaf = value` for a dotted key, `key = value` for a top-level one.
fn toml_setting(key: &str, value: &str) -> String {
    match key.rsplit_once('.') {
        Some((section, leaf)) => format!("[{section}]\n{leaf} = {value}\n"),
        None => format!("{key} = {value}\n"),
    }
}

#[test]
fn every_number_is_checked_against_its_range_wherever_it_is_set() {
    let mut checked = 0;
    for setting in table::SETTINGS {
        let form::Form::Whole { min, max, .. } = setting.form else {
            continue;
        };
        let range = format!("from {min} to {max}, got");
        let mut outside = vec![max + 1];
        outside.extend(min.checked_sub(1));
        if let Some(key) = setting.key {
            for n in [min, max] {
                let toml = toml_setting(key, &n.to_string());
                assert!(Config::from_toml(&toml).is_ok(), "{toml}");
            }
            for n in &outside {
                let toml = toml_setting(key, &n.to_string());
                let err = Config::from_toml(&toml).expect_err(&toml).to_string();
                assert!(
                    err.contains(&format!("{key}: expected")) && err.contains(&range),
                    "{err}"
                );
            }
        }
        if let Some(var) = setting.var {
            for n in [min, max] {
                assert!(
                    Config::from_vars(&vars(&[(var, &n.to_string())])).is_ok(),
                    "{var}={n}"
                );
            }
            for n in &outside {
                let err = Config::from_vars(&vars(&[(var, &n.to_string())]))
                    .expect_err(var)
                    .to_string();
                assert!(
                    err.contains(&format!("{var}: expected")) && err.contains(&range),
                    "{err}"
                );
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 20,
        "only {checked} numeric settings in the table"
    );
    for toml in ["[flush]\nmax_backlog = 0\n", "[cookie]\nmax_age_secs = 0\n"] {
        assert!(Config::from_toml(toml).is_err(), "{toml} is accepted");
    }
}

#[test]
fn the_readme_lists_every_setting_of_the_table_and_no_other() {
    let readme = include_str!("../../README.md");
    let rows = readme
        .split("| environment | TOML key |")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("the README has a configuration table");
    let mut listed: Vec<String> = Vec::new();
    for row in rows.lines().skip(2) {
        let columns: Vec<&str> = row.split('|').collect();
        for column in columns.iter().skip(1).take(2) {
            listed.extend(column.split('`').skip(1).step_by(2).map(|name| {
                // `[quotas.<operation>]` and `[[routes]]` are the sections `quotas` and `routes`.
                let name = name.trim_matches(['[', ']']);
                name.split(".<").next().unwrap_or(name).to_string()
            }));
        }
    }
    let names: Vec<&str> = table::SETTINGS
        .iter()
        .flat_map(|s| s.key.into_iter().chain(s.var))
        .chain([CONFIG_FILE_VAR])
        .collect();
    let covers = |name: &str, listed: &str| {
        listed == name
            || listed
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    for name in &names {
        assert!(
            listed.iter().any(|l| covers(name, l)),
            "the README does not list {name}"
        );
    }
    for listed in &listed {
        assert!(
            names.iter().any(|n| covers(n, listed)),
            "the README lists {listed}, which is no setting"
        );
    }
}

#[test]
fn a_redis_url_error_never_shows_the_password() {
    for (url, shown) in [
        (
            "rediss//:S3cr3tP4ss@redis.internal:6380",
            "\"rediss//***@redis.internal:6380\"",
        ),
        (
            "http://user:S3cr3tP4ss@redis.internal",
            "\"http://***@redis.internal\"",
        ),
        ("S3cr3tP4ss@redis.internal", "\"***@redis.internal\""),
    ] {
        let err = Config::from_vars(&vars(&[("REDIS_URL", url)]))
            .expect_err(url)
            .to_string();
        assert!(!err.contains("S3cr3tP4ss"), "{err}");
        assert!(err.contains(shown), "{err}");
    }
}

#[test]
fn a_next_service_token_is_accepted_only_beside_the_current_one() {
    let current = ("SESSIONGATE_SERVICE_TOKEN", "current-token-0123456789");
    let next = ("SESSIONGATE_SERVICE_TOKEN_NEXT", "next-token-0123456789");
    let config = Config::from_vars(&vars(&[current, next])).expect("valid");
    assert_eq!(config.service_token.as_deref(), Some(current.1));
    assert_eq!(config.service_token_next.as_deref(), Some(next.1));
    let err = Config::from_vars(&vars(&[next])).unwrap_err().to_string();
    assert!(
        err.contains("SESSIONGATE_SERVICE_TOKEN_NEXT: is accepted beside"),
        "{err}"
    );
    let err = Config::from_vars(&vars(&[
        current,
        ("SESSIONGATE_SERVICE_TOKEN_NEXT", "short"),
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("SESSIONGATE_SERVICE_TOKEN_NEXT: must be at least 16"),
        "{err}"
    );
}

#[test]
fn a_log_filter_that_would_silence_the_logs_is_refused() {
    for ok in [
        "info",
        "WARN",
        "info,sessiongate=debug",
        "sessiongate::http=trace",
    ] {
        let config = Config::from_vars(&vars(&[("RUST_LOG", ok)])).expect(ok);
        assert_eq!(config.log_filter, ok);
    }
    for bad in ["degub", "info,sessiongate=verbose", "inf"] {
        let err = Config::from_vars(&vars(&[("RUST_LOG", bad)]))
            .expect_err(bad)
            .to_string();
        assert!(
            err.starts_with("invalid configuration: RUST_LOG: "),
            "{err}"
        );
        assert!(err.contains("is not a level"), "{err}");
    }
    let err = Config::from_vars(&vars(&[("RUST_LOG", "debug, hyper=off")])).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid configuration: RUST_LOG: "),
        "{err}"
    );
    assert_eq!(Config::default().log_filter, "info");
}
