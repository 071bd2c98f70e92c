//! The plugin socket: HTTP/1.1 on a unix socket, `POST /<Method>` with JSON bodies, routed to
//! the [`Driver`]. The one place where driver errors become `{"Err": ...}` (IPAM:
//! `{"Error": ...}`) replies.

use std::fs;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Body;
use hyper::{header, Method, Request, Response, StatusCode};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Serialize;
use tokio::net::UnixListener;

use crate::agent::Agent;
use crate::driver::{Driver, DriverError};
use crate::protocol::{error_reply_body, CONTENT_TYPE};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Mode of the plugin socket: root and the socket's group (Docker runs as root).
pub const SOCKET_MODE: u32 = 0o660;

/// Errors of setting up the plugin socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is live: another plugin accepts connections on it; stop it or pass another \
         --plugin-socket",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error("refusing to replace {}: it exists and is not a socket", path.display())]
    NotASocket { path: PathBuf },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the socket's directory and clears the way: a live socket (another plugin) is an
/// error, a stale one is removed so Docker does not keep dialling a dead file.
pub fn prepare_socket(path: &Path) -> Result<(), SocketError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse {
                    path: path.to_path_buf(),
                });
            }
            tracing::info!(path = %path.display(), "removing stale socket");
            fs::remove_file(path).map_err(io_err("remove stale socket", path))
        }
        Ok(_) => Err(SocketError::NotASocket {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// The bound plugin socket; the socket file is removed when it is dropped.
#[derive(Debug)]
pub struct PluginSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for PluginSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl PluginSocket {
    /// Binds `path` (see [`prepare_socket`]) with mode 0660. Must run inside a tokio runtime.
    pub fn bind(path: &Path) -> Result<PluginSocket, SocketError> {
        prepare_socket(path)?;
        let listener = UnixListener::bind(path).map_err(io_err("bind", path))?;
        let socket = PluginSocket {
            listener,
            path: path.to_path_buf(),
        };
        fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(io_err("set mode of", path))?;
        Ok(socket)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` completes, then stops accepting and removes the socket.
    pub async fn serve<A: Agent>(self, driver: Arc<Driver<A>>, shutdown: impl Future<Output = ()>) {
        let handler = move |request| {
            let driver = Arc::clone(&driver);
            async move { handle(&driver, request).await }
        };
        cilium_api::server::serve(&self.listener, "plugin socket", handler, shutdown).await;
    }
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

fn error_reply(method: &str, status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    tracing::warn!(method, "{message}");
    reply(status, error_reply_body(method, message))
}

fn decode<T: DeserializeOwned>(method: &str, body: &[u8]) -> Result<T, DriverError> {
    serde_json::from_slice(body).map_err(|source| DriverError::InvalidBody {
        method: method.to_string(),
        source,
    })
}

fn encode<T: Serialize>(result: Result<T, DriverError>) -> Result<Vec<u8>, String> {
    let value = result.map_err(|e| e.to_string())?;
    serde_json::to_vec(&value).map_err(|e| format!("cannot encode the reply: {e}"))
}

/// Decodes the body, calls the async handler, encodes its reply.
macro_rules! call {
    ($driver:ident . $handler:ident, $method:expr, $body:expr) => {
        match decode($method, $body) {
            Ok(request) => encode($driver.$handler(request).await),
            Err(e) => encode::<()>(Err(e)),
        }
    };
}

/// Answers one request.
pub async fn handle<A, B>(driver: &Driver<A>, request: Request<B>) -> Response<Full<Bytes>>
where
    A: Agent,
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = request.uri().path().trim_start_matches('/').to_string();
    if request.method() != Method::POST {
        let message = format!("method {} not allowed; use POST", request.method());
        let mut response = error_reply(&method, StatusCode::METHOD_NOT_ALLOWED, &message);
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return response;
    }
    let body = match cilium_api::server::read_body(request, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => return error_reply(&method, StatusCode::OK, &e.to_string()),
    };
    tracing::debug!(method, body = %String::from_utf8_lossy(&body), "call");
    let m = method.as_str();
    let body = &body[..];
    let result = match m {
        "Plugin.Activate" => encode(Ok(driver.activate())),
        "NetworkDriver.GetCapabilities" => encode(Ok(driver.network_capabilities())),
        "NetworkDriver.CreateNetwork" => call!(driver.create_network, m, body),
        "NetworkDriver.DeleteNetwork" => call!(driver.delete_network, m, body),
        "NetworkDriver.CreateEndpoint" => call!(driver.create_endpoint, m, body),
        "NetworkDriver.EndpointOperInfo" => {
            encode(decode(m, body).map(|r| driver.endpoint_oper_info(r)))
        }
        "NetworkDriver.DeleteEndpoint" => call!(driver.delete_endpoint, m, body),
        "NetworkDriver.Join" => call!(driver.join, m, body),
        "NetworkDriver.Leave" => encode(decode(m, body).map(|r| driver.leave(r))),
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => {
            encode(decode::<IgnoredAny>(m, body).map(|_| serde_json::json!({})))
        }
        // libnetwork reads 404 as "not supported" and carries on.
        "NetworkDriver.ProgramExternalConnectivity"
        | "NetworkDriver.RevokeExternalConnectivity"
        | "NetworkDriver.AllocateNetwork"
        | "NetworkDriver.FreeNetwork" => {
            let message = format!("{m} is not supported");
            return error_reply(m, StatusCode::NOT_FOUND, &message);
        }
        "IpamDriver.GetCapabilities" => encode(Ok(driver.ipam_capabilities())),
        "IpamDriver.GetDefaultAddressSpaces" => encode(Ok(driver.address_spaces())),
        "IpamDriver.RequestPool" => call!(driver.request_pool, m, body),
        "IpamDriver.ReleasePool" => encode(decode(m, body).and_then(|r| driver.release_pool(r))),
        "IpamDriver.RequestAddress" => call!(driver.request_address, m, body),
        "IpamDriver.ReleaseAddress" => call!(driver.release_address, m, body),
        _ => {
            let message = format!("unknown method {m}");
            return error_reply(m, StatusCode::NOT_FOUND, &message);
        }
    };
    match result {
        Ok(body) => reply(StatusCode::OK, body),
        Err(message) => error_reply(m, StatusCode::OK, &message),
    }
}

#[cfg(test)]
mod tests;
