//! Gateway mode: the `[[routes]]` table that puts the gateway in front of other services.
//!
//! A route maps a path pattern and a set of methods to an upstream, optionally metered by a
//! quota operation. This module owns the table's rules (parsing, validation, matching); it
//! knows nothing of sockets: `http::proxy` forwards requests and settles reservations.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, StatusCode, Uri};
use serde::Deserialize;

/// One `[[routes]]` entry as written in the TOML file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    path: String,
    methods: Option<Vec<String>>,
    upstream: String,
    operation: Option<String>,
    cost: Option<u64>,
    missing_session: Option<String>,
    commit_on: Option<Vec<String>>,
    timeout_ms: Option<u64>,
}

/// What a metered route does for a request without a (known) session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingSession {
    /// 404, as the session API answers for an unknown session.
    Reject,
    /// A new session, subject to the creation throttle, sent back as a cookie.
    Create,
}

/// The quota a metered route reserves before it forwards.
#[derive(Clone, Debug)]
pub struct Metering {
    pub operation: String,
    /// `None`: the policy's default cost.
    pub cost: Option<u64>,
    pub missing_session: MissingSession,
    /// Upstream statuses that commit the reservation; any other status refunds it.
    pub commit_on: Vec<StatusSet>,
}

/// A status class (`2xx`) or one status (`201`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusSet {
    Class(u16),
    Exact(u16),
}

impl StatusSet {
    fn parse(text: &str) -> Option<StatusSet> {
        match text.as_bytes() {
            [digit @ b'1'..=b'5', b'x', b'x'] => Some(StatusSet::Class(u16::from(digit - b'0'))),
            _ => text
                .parse::<u16>()
                .ok()
                .filter(|code| (100..=599).contains(code))
                .map(StatusSet::Exact),
        }
    }

    fn contains(self, status: StatusCode) -> bool {
        match self {
            StatusSet::Class(class) => status.as_u16() / 100 == class,
            StatusSet::Exact(code) => status.as_u16() == code,
        }
    }
}

/// One route of the table.
#[derive(Clone, Debug)]
pub struct Route {
    /// The pattern as configured, also the route's label in metrics.
    pub pattern: Arc<str>,
    path: PathPattern,
    /// Empty: every method.
    methods: Vec<Method>,
    pub upstream: Upstream,
    pub metering: Option<Metering>,
    /// Until the upstream's response headers arrive.
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
enum PathPattern {
    Exact(String),
    /// `"/files/*"` matches `/files` and everything below it.
    Prefix(String),
}

/// Where a route's requests go: `http://host:port` and an optional path prefix.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    pub base_path: String,
}

impl Upstream {
    /// The upstream URI for a request's path and query.
    pub fn uri(&self, path_and_query: &PathAndQuery) -> Result<Uri, http::Error> {
        let path_and_query = if self.base_path.is_empty() {
            // The common case reuses the request's parsed path: no copy, no parse.
            path_and_query.clone()
        } else {
            PathAndQuery::try_from(format!("{}{path_and_query}", self.base_path))?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

/// The outcome of looking a request up in the table.
pub enum Lookup<'a> {
    /// Shared, so a metered request can settle in a task of its own.
    Found(&'a Arc<Route>),
    /// The path is routed, but not for this method; the value lists the methods that are.
    MethodNotAllowed(String),
    NotFound,
}

/// The routes, in the order they were configured; the first match wins.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

/// What an any-method route answers in `Allow`: every method but `CONNECT`, which asks for
/// a tunnel, not a request, and is never forwarded.
const FORWARDED_METHODS: [Method; 8] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::TRACE,
];

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl RouteTable {
    /// Checks every entry; `known_operation` says whether a quota operation is configured.
    /// The error is `(setting, reason)` for `ConfigError`.
    pub fn parse(
        files: Vec<RouteFile>,
        known_operation: impl Fn(&str) -> bool,
    ) -> Result<RouteTable, (String, String)> {
        let mut routes = Vec::with_capacity(files.len());
        for (i, file) in files.into_iter().enumerate() {
            let setting = |key: &str| format!("routes[{i}].{key}");
            let fail = |key: &str, reason: String| (setting(key), reason);
            let path = parse_path(&file.path).map_err(|r| fail("path", r))?;
            let methods = file
                .methods
                .unwrap_or_default()
                .iter()
                .map(
                    |m| match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                        Ok(Method::CONNECT) => {
                            Err(fail("methods", "CONNECT is never forwarded".into()))
                        }
                        Ok(method) => Ok(method),
                        Err(_) => Err(fail("methods", format!("{m:?} is not an HTTP method"))),
                    },
                )
                .collect::<Result<Vec<_>, _>>()?;
            let upstream = parse_upstream(&file.upstream).map_err(|r| fail("upstream", r))?;
            let timeout = match file.timeout_ms {
                None => DEFAULT_TIMEOUT,
                Some(0) => return Err(fail("timeout_ms", "must be greater than zero".into())),
                Some(ms) => Duration::from_millis(ms),
            };
            let metering = match file.operation {
                None => {
                    let metering_only = [
                        ("cost", file.cost.is_some()),
                        ("missing_session", file.missing_session.is_some()),
                        ("commit_on", file.commit_on.is_some()),
                    ];
                    if let Some((key, _)) = metering_only.iter().find(|(_, set)| *set) {
                        return Err(fail(
                            key,
                            "only applies to a route with an operation".into(),
                        ));
                    }
                    None
                }
                Some(operation) => {
                    if !known_operation(&operation) {
                        return Err(fail(
                            "operation",
                            format!("{operation:?} is not a configured quota operation"),
                        ));
                    }
                    if file.cost == Some(0) {
                        return Err(fail("cost", "must be at least 1".into()));
                    }
                    let missing_session = match file.missing_session.as_deref() {
                        None | Some("reject") => MissingSession::Reject,
                        Some("create") => MissingSession::Create,
                        Some(other) => {
                            return Err(fail(
                                "missing_session",
                                format!("{other:?} is not one of reject, create"),
                            ))
                        }
                    };
                    let commit_on = match file.commit_on {
                        None => vec![StatusSet::Class(2)],
                        Some(list) if list.is_empty() => {
                            return Err(fail("commit_on", "must name at least one status".into()))
                        }
                        Some(list) => list
                            .iter()
                            .map(|s| {
                                StatusSet::parse(s).ok_or_else(|| {
                                    fail(
                                        "commit_on",
                                        format!("{s:?} is neither a status class like \"2xx\" nor a status from 100 to 599"),
                                    )
                                })
                            })
                            .collect::<Result<_, _>>()?,
                    };
                    Some(Metering {
                        operation,
                        cost: file.cost,
                        missing_session,
                        commit_on,
                    })
                }
            };
            routes.push(Arc::new(Route {
                pattern: file.path.into(),
                path,
                methods,
                upstream,
                metering,
                timeout,
            }));
        }
        Ok(RouteTable { routes })
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The first route whose path and method match; `path` must be canonical.
    pub fn find(&self, method: &Method, path: &str) -> Lookup<'_> {
        let mut allowed: Vec<&str> = Vec::new();
        for route in self.routes.iter().filter(|r| r.path.matches(path)) {
            let methods = match route.methods.as_slice() {
                [] => &FORWARDED_METHODS[..],
                some => some,
            };
            if methods.contains(method) {
                return Lookup::Found(route);
            }
            for method in methods {
                if !allowed.contains(&method.as_str()) {
                    allowed.push(method.as_str());
                }
            }
        }
        if allowed.is_empty() {
            return Lookup::NotFound;
        }
        Lookup::MethodNotAllowed(allowed.join(", "))
    }
}

impl Metering {
    pub fn commits(&self, status: StatusCode) -> bool {
        self.commit_on.iter().any(|set| set.contains(status))
    }
}

impl PathPattern {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(exact) => path == exact,
            PathPattern::Prefix(prefix) => match path.strip_prefix(prefix.as_str()) {
                Some(rest) => rest.is_empty() || rest.starts_with('/'),
                None => false,
            },
        }
    }
}

/// Paths the gateway serves itself can't be routed away.
const RESERVED: [&str; 2] = ["/api/session", "/internal"];

fn parse_path(text: &str) -> Result<PathPattern, String> {
    if !text.starts_with('/') {
        return Err(format!("{text:?} must start with '/'"));
    }
    if RESERVED.iter().any(|reserved| text.starts_with(reserved)) {
        return Err(format!(
            "{text:?} is served by the gateway itself (/api/session*, /internal/*)"
        ));
    }
    let pattern = match text.strip_suffix("/*") {
        Some(prefix) if prefix.ends_with('/') => {
            return Err(format!(
                "{text:?}: one '/' before the '*', like \"/files/*\""
            ))
        }
        Some(prefix) => PathPattern::Prefix(prefix.to_string()),
        None => PathPattern::Exact(text.to_string()),
    };
    let literal = match &pattern {
        PathPattern::Exact(p) | PathPattern::Prefix(p) => p,
    };
    if literal.contains('*') || literal.contains('?') {
        return Err(format!(
            "{text:?}: '*' is only allowed as a final \"/*\", and no query"
        ));
    }
    // Requests are matched in canonical form, so a pattern in any other would never match.
    match crate::path::canonical(literal) {
        Ok(canonical) if canonical == literal.as_str() => {}
        Ok(canonical) => return Err(format!("{text:?} is not canonical; write {canonical:?}")),
        Err(error) => return Err(format!("{text:?}: {error}")),
    }
    Ok(pattern)
}

fn parse_upstream(text: &str) -> Result<Upstream, String> {
    let uri: Uri = text.parse().map_err(|_| format!("{text:?} is not a URL"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return Err(format!(
            "{text:?} needs a scheme and a host, like http://app:8000"
        ));
    };
    if scheme != &Scheme::HTTP {
        return Err(format!(
            "{text:?}: only http:// upstreams (on the private network) are supported"
        ));
    }
    if uri.query().is_some() {
        return Err(format!("{text:?} must not have a query"));
    }
    Ok(Upstream {
        scheme: scheme.clone(),
        authority: authority.clone(),
        base_path: uri.path().trim_end_matches('/').to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(toml_routes: &str) -> Result<RouteTable, (String, String)> {
        #[derive(Deserialize)]
        struct File {
            routes: Vec<RouteFile>,
        }
        let file: File = toml::from_str(toml_routes).expect("valid TOML");
        RouteTable::parse(file.routes, |op| op == "generate")
    }

    #[test]
    fn first_matching_route_wins_and_methods_are_checked() {
        let table = table(
            r#"
            [[routes]]
            path = "/v1/generate"
            methods = ["post"]
            upstream = "http://127.0.0.1:9000/app/"
            operation = "generate"
            [[routes]]
            path = "/v1/*"
            upstream = "http://127.0.0.1:9001"
            "#,
        )
        .expect("valid table");
        let Lookup::Found(route) = table.find(&Method::POST, "/v1/generate") else {
            panic!("the metered route should match");
        };
        assert!(route.metering.is_some());
        let path = PathAndQuery::from_static("/v1/generate?x=1");
        let uri = route.upstream.uri(&path).expect("uri");
        assert_eq!(uri.to_string(), "http://127.0.0.1:9000/app/v1/generate?x=1");
        let Lookup::Found(route) = table.find(&Method::GET, "/v1/generate") else {
            panic!("the prefix route takes other methods");
        };
        assert!(route.metering.is_none());
        assert!(matches!(table.find(&Method::GET, "/v1"), Lookup::Found(_)));
        assert!(matches!(table.find(&Method::GET, "/v10"), Lookup::NotFound));
        assert!(matches!(
            table.find(&Method::GET, "/other"),
            Lookup::NotFound
        ));
    }

    #[test]
    fn a_path_routed_for_other_methods_lists_them() {
        let table = table(
            r#"
            [[routes]]
            path = "/upload"
            methods = ["PUT", "POST"]
            upstream = "http://127.0.0.1:9000"
            "#,
        )
        .expect("valid table");
        match table.find(&Method::GET, "/upload") {
            Lookup::MethodNotAllowed(allow) => assert_eq!(allow, "PUT, POST"),
            _ => panic!("GET should not be allowed"),
        }
    }

    #[test]
    fn connect_is_never_forwarded() {
        let table = table(
            r#"
            [[routes]]
            path = "/any/*"
            upstream = "http://127.0.0.1:9000"
            "#,
        )
        .expect("valid table");
        assert!(matches!(
            table.find(&Method::TRACE, "/any/x"),
            Lookup::Found(_)
        ));
        match table.find(&Method::CONNECT, "/any/x") {
            Lookup::MethodNotAllowed(allow) => {
                assert_eq!(allow, "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE")
            }
            _ => panic!("CONNECT must be refused"),
        }
    }

    #[test]
    fn commit_statuses_parse_as_classes_or_codes() {
        let table = table(
            r#"
            [[routes]]
            path = "/x"
            upstream = "http://127.0.0.1:9000"
            operation = "generate"
            commit_on = ["2xx", "404"]
            "#,
        )
        .expect("valid table");
        let Lookup::Found(route) = table.find(&Method::GET, "/x") else {
            panic!("route");
        };
        let metering = route.metering.as_ref().expect("metered");
        assert!(metering.commits(StatusCode::CREATED));
        assert!(metering.commits(StatusCode::NOT_FOUND));
        assert!(!metering.commits(StatusCode::BAD_GATEWAY));
        assert!(!metering.commits(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn errors_name_the_entry_and_key() {
        let cases = [
            ("path = \"v1\"\nupstream = \"http://a:1\"", "routes[0].path"),
            ("path = \"/api/session/x\"\nupstream = \"http://a:1\"", "routes[0].path"),
            ("path = \"/a/*/b\"\nupstream = \"http://a:1\"", "routes[0].path"),
            ("path = \"/a/../b\"\nupstream = \"http://a:1\"", "routes[0].path"),
            ("path = \"/a//*\"\nupstream = \"http://a:1\"", "routes[0].path"),
            ("path = \"/a\"\nupstream = \"http://a:1\"\nmethods = [\"connect\"]", "routes[0].methods"),
            ("path = \"/a\"\nupstream = \"https://a:1\"", "routes[0].upstream"),
            ("path = \"/a\"\nupstream = \"a:1\"", "routes[0].upstream"),
            ("path = \"/a\"\nupstream = \"http://a:1\"\noperation = \"nope\"", "routes[0].operation"),
            ("path = \"/a\"\nupstream = \"http://a:1\"\ncost = 2", "routes[0].cost"),
            ("path = \"/a\"\nupstream = \"http://a:1\"\noperation = \"generate\"\ncommit_on = [\"2xy\"]", "routes[0].commit_on"),
            ("path = \"/a\"\nupstream = \"http://a:1\"\noperation = \"generate\"\nmissing_session = \"maybe\"", "routes[0].missing_session"),
            ("path = \"/a\"\nupstream = \"http://a:1\"\nmethods = [\"GE T\"]", "routes[0].methods"),
            ("path = \"/a\"\nupstream = \"http://a:1\"\ntimeout_ms = 0", "routes[0].timeout_ms"),
        ];
        for (entry, setting) in cases {
            let error = table(&format!("[[routes]]\n{entry}")).expect_err(entry);
            assert_eq!(error.0, setting, "{entry}: {}", error.1);
        }
    }
}
