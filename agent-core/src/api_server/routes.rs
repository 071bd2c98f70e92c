//! The routing table of the API: which paths exist under `/v1`, which methods each serves,
//! and the parsing of a request path into a typed [`Route`]. `openapi.json` documents exactly
//! this table (a test holds them together).

use http::Method;

/// One documented path with its methods.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    /// The path template as the OpenAPI document writes it (without `/v1`).
    pub template: &'static str,
    pub methods: &'static [Method],
}

/// Every path the agent serves.
pub const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        template: "/healthz",
        methods: &[Method::GET],
    },
    RouteSpec {
        template: "/config",
        methods: &[Method::GET, Method::PATCH],
    },
    RouteSpec {
        template: "/ipam",
        methods: &[Method::POST],
    },
    RouteSpec {
        template: "/ipam/{ip}",
        methods: &[Method::POST, Method::DELETE],
    },
    RouteSpec {
        template: "/endpoint",
        methods: &[Method::GET],
    },
    RouteSpec {
        template: "/endpoint/{id}",
        methods: &[Method::GET, Method::PUT, Method::PATCH, Method::DELETE],
    },
    RouteSpec {
        template: "/endpoint/{id}/config",
        methods: &[Method::GET, Method::PATCH],
    },
    RouteSpec {
        template: "/endpoint/{id}/labels",
        methods: &[Method::GET, Method::PUT],
    },
    RouteSpec {
        template: "/endpoint/{id}/healthz",
        methods: &[Method::GET],
    },
    RouteSpec {
        template: "/identity",
        methods: &[Method::GET],
    },
    RouteSpec {
        template: "/identity/{id}",
        methods: &[Method::GET],
    },
    RouteSpec {
        template: "/policy",
        methods: &[Method::GET, Method::PUT, Method::DELETE],
    },
    RouteSpec {
        template: "/policy/resolve",
        methods: &[Method::GET],
    },
    RouteSpec {
        template: "/monitor",
        methods: &[Method::GET],
    },
    RouteSpec {
        template: "/map/endpoint",
        methods: &[Method::GET],
    },
    RouteSpec {
        template: "/map/ipcache",
        methods: &[Method::GET],
    },
    RouteSpec {
        template: "/map/ct",
        methods: &[Method::GET],
    },
    RouteSpec {
        template: "/map/policy/{id}",
        methods: &[Method::GET],
    },
    RouteSpec {
        template: "/service",
        methods: &[Method::GET],
    },
    RouteSpec {
        template: "/service/{id}",
        methods: &[Method::GET, Method::PUT, Method::DELETE],
    },
    RouteSpec {
        template: "/map/lb",
        methods: &[Method::GET],
    },
    RouteSpec {
        template: "/map/tunnel",
        methods: &[Method::GET],
    },
    RouteSpec {
        template: "/node",
        methods: &[Method::GET],
    },
];

/// A parsed request path. Path parameters are percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Config,
    Ipam,
    IpamIp(String),
    Endpoints,
    Endpoint(String),
    EndpointConfig(String),
    EndpointLabels(String),
    EndpointHealth(String),
    Identities,
    Identity(String),
    Policy,
    PolicyResolve,
    /// The stream of datapath events.
    Monitor,
    /// The datapath's endpoint map.
    MapEndpoint,
    /// The datapath's ipcache (prefix -> identity).
    MapIpcache,
    /// The datapath's conntrack tables.
    MapCt,
    /// The datapath's policy entries of one endpoint.
    MapPolicy(String),
    MapLb,
    MapTunnel,
    Nodes,
    /// Every service.
    Services,
    /// One service, by its id (not yet parsed).
    Service(String),
}

/// Why a path did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No such path.
    NotFound,
    /// A path parameter has a malformed percent-escape.
    BadEncoding,
}

impl Route {
    /// Resolves a full request path (with the `/v1` prefix).
    pub fn parse(path: &str) -> Result<Route, RouteError> {
        let rest = path
            .strip_prefix(cilium_api::API_BASE)
            .ok_or(RouteError::NotFound)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let segments: Vec<&str> = rest.split('/').skip(1).collect();
        if rest.is_empty() || !rest.starts_with('/') || segments.iter().any(|s| s.is_empty()) {
            return Err(RouteError::NotFound);
        }
        let param = |s: &str| cilium_api::path::decode(s, false).ok_or(RouteError::BadEncoding);
        match segments.as_slice() {
            ["healthz"] => Ok(Route::Healthz),
            ["config"] => Ok(Route::Config),
            ["ipam"] => Ok(Route::Ipam),
            ["ipam", ip] => Ok(Route::IpamIp(param(ip)?)),
            ["endpoint"] => Ok(Route::Endpoints),
            ["endpoint", id] => Ok(Route::Endpoint(param(id)?)),
            ["endpoint", id, "config"] => Ok(Route::EndpointConfig(param(id)?)),
            ["endpoint", id, "labels"] => Ok(Route::EndpointLabels(param(id)?)),
            ["endpoint", id, "healthz"] => Ok(Route::EndpointHealth(param(id)?)),
            ["identity"] => Ok(Route::Identities),
            ["identity", id] => Ok(Route::Identity(param(id)?)),
            ["policy"] => Ok(Route::Policy),
            ["policy", "resolve"] => Ok(Route::PolicyResolve),
            ["monitor"] => Ok(Route::Monitor),
            ["map", "endpoint"] => Ok(Route::MapEndpoint),
            ["map", "ipcache"] => Ok(Route::MapIpcache),
            ["map", "ct"] => Ok(Route::MapCt),
            ["map", "policy", id] => Ok(Route::MapPolicy(param(id)?)),
            ["map", "lb"] => Ok(Route::MapLb),
            ["map", "tunnel"] => Ok(Route::MapTunnel),
            ["node"] => Ok(Route::Nodes),
            ["service"] => Ok(Route::Services),
            ["service", id] => Ok(Route::Service(param(id)?)),
            _ => Err(RouteError::NotFound),
        }
    }

    /// The entry of [`ROUTES`] this route belongs to.
    pub fn spec(&self) -> &'static RouteSpec {
        &ROUTES[self.index()]
    }

    /// The position of [`Route::spec`] in [`ROUTES`].
    pub fn index(&self) -> usize {
        match self {
            Route::Healthz => 0,
            Route::Config => 1,
            Route::Ipam => 2,
            Route::IpamIp(_) => 3,
            Route::Endpoints => 4,
            Route::Endpoint(_) => 5,
            Route::EndpointConfig(_) => 6,
            Route::EndpointLabels(_) => 7,
            Route::EndpointHealth(_) => 8,
            Route::Identities => 9,
            Route::Identity(_) => 10,
            Route::Policy => 11,
            Route::PolicyResolve => 12,
            Route::Monitor => 13,
            Route::MapEndpoint => 14,
            Route::MapIpcache => 15,
            Route::MapCt => 16,
            Route::MapPolicy(_) => 17,
            Route::Services => 18,
            Route::Service(_) => 19,
            Route::MapLb => 20,
            Route::MapTunnel => 21,
            Route::Nodes => 22,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_resolves_to_itself() {
        for spec in ROUTES {
            let path = format!(
                "/v1{}",
                spec.template
                    .replace("{ip}", "10.0.0.1")
                    .replace("{id}", "7")
            );
            let route = Route::parse(&path).unwrap();
            assert_eq!(route.spec().template, spec.template, "{path}");
        }
    }

    #[test]
    fn parameters_are_decoded() {
        assert_eq!(
            Route::parse("/v1/endpoint/pod-name:default%2Fweb/labels").unwrap(),
            Route::EndpointLabels("pod-name:default/web".into())
        );
        assert_eq!(
            Route::parse("/v1/ipam/f00d::5").unwrap(),
            Route::IpamIp("f00d::5".into())
        );
        assert_eq!(Route::parse("/v1/endpoint/").unwrap(), Route::Endpoints);
        assert_eq!(
            Route::parse("/v1/endpoint/%zz"),
            Err(RouteError::BadEncoding)
        );
        assert_eq!(
            Route::parse("/v1/map/policy/container-id:abc").unwrap(),
            Route::MapPolicy("container-id:abc".into())
        );
        assert_eq!(
            Route::parse("/v1/map/policy/pod-name:default%2Fweb").unwrap(),
            Route::MapPolicy("pod-name:default/web".into())
        );
        assert_eq!(Route::parse("/v1/monitor/").unwrap(), Route::Monitor);
        assert_eq!(Route::parse("/v1/map/ct").unwrap(), Route::MapCt);
        assert_eq!(Route::parse("/v1/service/").unwrap(), Route::Services);
        assert_eq!(
            Route::parse("/v1/service/7").unwrap(),
            Route::Service("7".into())
        );
    }

    #[test]
    fn unknown_paths() {
        for p in [
            "/",
            "/v1",
            "/v1/",
            "/v2/healthz",
            "/v1/healthzz",
            "/v1/endpoint//config",
            "/v1/endpoint/1/bogus",
            "/v1/ipam/1/2",
            "/v1/map",
            "/v1/map/policy",
            "/v1/map/policy/1/2",
            "/v1/map/tunnel/1",
            "/v1/node/x",
            "/v1/monitor/drop",
            "/v1/service/1/backends",
            "/healthz",
        ] {
            assert_eq!(Route::parse(p), Err(RouteError::NotFound), "{p}");
        }
    }
}
