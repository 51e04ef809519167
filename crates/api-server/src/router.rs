//! From a method, a path and a body to a [`VmmAction`], with Firecracker's paths and its
//! error messages for what does not fit; and from an [`ActionResult`] back to a response.
//!
//! [`ROUTES`] lists every method and path served; the OpenAPI document in
//! `docs/api/vireo-api.json` is checked against it and against [`route`] by the tests.

use api::action::{ActionError, ActionResult, VmmAction, VmmData};
use api::firecracker::{ActionType, InstanceActionInfo, Vm, VmState};
use serde::de::DeserializeOwned;

use crate::http::Response;

/// Every (method, path template) the server answers.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/version"),
    ("GET", "/vm/config"),
    ("GET", "/machine-config"),
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/cpu-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/{drive_id}"),
    ("PATCH", "/drives/{drive_id}"),
    ("PUT", "/network-interfaces/{iface_id}"),
    ("PATCH", "/network-interfaces/{iface_id}"),
    ("PUT", "/pmem/{id}"),
    ("PATCH", "/pmem/{id}"),
    ("PUT", "/vsock"),
    ("PUT", "/entropy"),
    ("GET", "/balloon"),
    ("PUT", "/balloon"),
    ("PATCH", "/balloon"),
    ("GET", "/balloon/statistics"),
    ("PATCH", "/balloon/statistics"),
    ("PATCH", "/balloon/hinting/start"),
    ("GET", "/balloon/hinting/status"),
    ("PATCH", "/balloon/hinting/stop"),
    ("PUT", "/actions"),
    ("PATCH", "/vm"),
    ("PUT", "/snapshot/create"),
    ("PUT", "/snapshot/load"),
    ("PUT", "/logger"),
    ("PUT", "/metrics"),
    ("PUT", "/serial"),
    ("GET", "/mmds"),
    ("PUT", "/mmds"),
    ("PATCH", "/mmds"),
    ("PUT", "/mmds/config"),
];

/// A request refused before it reaches the VMM: always a 400 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No such path for this method.
    #[error("Invalid request method and/or path: {0} {1}.")]
    InvalidPathMethod(String, String),
    /// A GET with a body.
    #[error("GET request cannot have a body.")]
    GetWithBody,
    /// A PUT or PATCH without one.
    #[error("Empty {0} request.")]
    EmptyBody(String),
    /// The body is not the JSON this path takes.
    #[error("An error occurred when deserializing the json body of a request: {0}.")]
    Json(String),
    /// `/drives/` (or `/network-interfaces/`, `/pmem/`) with no id.
    #[error("The ID cannot be empty.")]
    EmptyId,
    /// An id with other characters.
    #[error("API Resource IDs can only contain alphanumeric characters and underscores.")]
    InvalidId,
    /// The body names another resource than the path.
    #[error("The id from the path does not match the id from the body!")]
    IdMismatch,
}

fn body_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, RouteError> {
    serde_json::from_slice(body).map_err(|e| RouteError::Json(e.to_string()))
}

fn checked_id(id: &str) -> Result<&str, RouteError> {
    if id.is_empty() {
        return Err(RouteError::EmptyId);
    }
    if !id.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
        return Err(RouteError::InvalidId);
    }
    Ok(id)
}

/// The action `method path` with `body` asks for.
pub fn route(method: &str, path: &str, body: Option<&[u8]>) -> Result<VmmAction, RouteError> {
    let trimmed = path.trim_start_matches('/');
    let segments: Vec<&str> = trimmed.split_terminator('/').collect();
    let invalid = || RouteError::InvalidPathMethod(method.to_string(), trimmed.to_string());
    let first = segments.first().copied().unwrap_or("");
    let rest = segments.get(1..).unwrap_or(&[]);

    match method {
        "GET" => {
            let action = match (first, rest) {
                ("", []) => VmmAction::GetInstanceInfo,
                ("version", []) => VmmAction::GetVersion,
                ("vm", ["config"]) => VmmAction::GetFullVmConfig,
                ("machine-config", []) => VmmAction::GetMachineConfig,
                ("balloon", []) => VmmAction::GetBalloon,
                ("balloon", ["statistics"]) => VmmAction::GetBalloonStats,
                ("balloon", ["hinting", "status"]) => VmmAction::GetBalloonHintingStatus,
                ("mmds", []) => VmmAction::GetMmds,
                _ => return Err(invalid()),
            };
            match body {
                Some(_) => Err(RouteError::GetWithBody),
                None => Ok(action),
            }
        }
        "PATCH" if first == "balloon" && matches!(rest, ["hinting", "start" | "stop"]) => {
            hinting_action(rest[1] == "start", body)
        }
        "PUT" | "PATCH" => {
            let known = matches!(
                (method, first, rest),
                (
                    "PUT",
                    "machine-config" | "cpu-config" | "boot-source" | "vsock" | "entropy",
                    []
                ) | (
                    "PUT",
                    "balloon" | "actions" | "logger" | "metrics" | "serial",
                    []
                ) | ("PUT", "snapshot", ["create" | "load"])
                    | ("PUT", "mmds", [] | ["config"])
                    | ("PATCH", "mmds", [])
                    | (
                        "PUT" | "PATCH",
                        "drives" | "network-interfaces" | "pmem",
                        [] | [_]
                    )
                    | ("PATCH", "machine-config" | "balloon" | "vm", [])
                    | ("PATCH", "balloon", ["statistics"])
            );
            if !known {
                return Err(invalid());
            }
            let Some(body) = body else {
                return Err(RouteError::EmptyBody(method.to_string()));
            };
            body_action(method, first, rest, body)
        }
        _ => Err(invalid()),
    }
}

/// `PATCH /balloon/hinting/start` or `/stop`, whose body is optional (as in Firecracker):
/// none starts a run with the defaults; stop takes none or an empty object.
fn hinting_action(start: bool, body: Option<&[u8]>) -> Result<VmmAction, RouteError> {
    if start {
        let cmd = body.map(body_json).transpose()?.unwrap_or_default();
        return Ok(VmmAction::StartBalloonHinting(cmd));
    }
    if let Some(body) = body {
        body_json::<api::firecracker::BalloonStopCmd>(body)?;
    }
    Ok(VmmAction::StopBalloonHinting)
}

fn body_action(
    method: &str,
    first: &str,
    rest: &[&str],
    body: &[u8],
) -> Result<VmmAction, RouteError> {
    Ok(match (method, first) {
        ("PUT", "machine-config") => VmmAction::PutMachineConfig(body_json(body)?),
        ("PATCH", "machine-config") => {
            let update: api::firecracker::MachineConfigUpdate = body_json(body)?;
            if update.is_empty() {
                return Err(RouteError::EmptyBody("PATCH".into()));
            }
            VmmAction::PatchMachineConfig(update)
        }
        ("PUT", "cpu-config") => VmmAction::PutCpuConfig(body_json(body)?),
        ("PUT", "boot-source") => VmmAction::PutBootSource(body_json(body)?),
        ("PUT", "vsock") => VmmAction::PutVsock(body_json(body)?),
        ("PUT", "entropy") => VmmAction::PutEntropy(body_json(body)?),
        ("PUT", "balloon") => VmmAction::PutBalloon(body_json(body)?),
        ("PATCH", "balloon") if rest.is_empty() => VmmAction::PatchBalloon(body_json(body)?),
        ("PATCH", "balloon") => VmmAction::PatchBalloonStats(body_json(body)?),
        ("PUT", "logger") => VmmAction::PutLogger(body_json(body)?),
        ("PUT", "metrics") => VmmAction::PutMetrics(body_json(body)?),
        ("PUT", "serial") => VmmAction::PutSerial(body_json(body)?),
        ("PUT", "snapshot") if rest == ["create"] => VmmAction::CreateSnapshot(body_json(body)?),
        ("PUT", "snapshot") => VmmAction::LoadSnapshot(body_json(body)?),
        ("PUT", "mmds") if rest.is_empty() => VmmAction::PutMmds(body_json(body)?),
        ("PUT", "mmds") => VmmAction::PutMmdsConfig(body_json(body)?),
        ("PATCH", "mmds") => VmmAction::PatchMmds(body_json(body)?),
        ("PUT", "actions") => {
            let info: InstanceActionInfo = body_json(body)?;
            match info.action_type {
                ActionType::InstanceStart => VmmAction::InstanceStart,
                ActionType::SendCtrlAltDel => VmmAction::SendCtrlAltDel,
                ActionType::FlushMetrics => VmmAction::FlushMetrics,
            }
        }
        ("PATCH", "vm") => {
            let vm: Vm = body_json(body)?;
            match vm.state {
                VmState::Paused => VmmAction::Pause,
                VmState::Resumed => VmmAction::Resume,
            }
        }
        (_, "drives") => {
            let id = checked_id(rest.first().copied().unwrap_or(""))?;
            if method == "PUT" {
                let drive: api::firecracker::Drive = body_json(body)?;
                if drive.drive_id != id {
                    return Err(RouteError::IdMismatch);
                }
                VmmAction::PutDrive(drive)
            } else {
                let drive: api::firecracker::PartialDrive = body_json(body)?;
                if drive.drive_id != id {
                    return Err(RouteError::IdMismatch);
                }
                VmmAction::PatchDrive(drive)
            }
        }
        (_, "pmem") => {
            let id = checked_id(rest.first().copied().unwrap_or(""))?;
            if method == "PUT" {
                let pmem: api::firecracker::Pmem = body_json(body)?;
                if pmem.id != id {
                    return Err(RouteError::IdMismatch);
                }
                VmmAction::PutPmem(pmem)
            } else {
                let pmem: api::firecracker::PartialPmem = body_json(body)?;
                if pmem.id != id {
                    return Err(RouteError::IdMismatch);
                }
                VmmAction::PatchPmem(pmem)
            }
        }
        (_, "network-interfaces") => {
            let id = checked_id(rest.first().copied().unwrap_or(""))?;
            if method == "PUT" {
                let nic: api::firecracker::NetworkInterface = body_json(body)?;
                if nic.iface_id != id {
                    return Err(RouteError::IdMismatch);
                }
                VmmAction::PutNetworkInterface(nic)
            } else {
                let nic: api::firecracker::PartialNetworkInterface = body_json(body)?;
                if nic.iface_id != id {
                    return Err(RouteError::IdMismatch);
                }
                VmmAction::PatchNetworkInterface(nic)
            }
        }
        _ => {
            return Err(RouteError::InvalidPathMethod(
                method.to_string(),
                first.to_string(),
            ));
        }
    })
}

/// The response for the VMM's answer.
pub fn respond(result: &ActionResult) -> Response {
    let json = |value: Result<String, serde_json::Error>| match value {
        Ok(body) => Response::json(200, body),
        Err(e) => Response::fault(500, &format!("cannot encode the response: {e}")),
    };
    match result {
        Ok(VmmData::Empty) => Response::no_content(),
        Ok(VmmData::InstanceInfo(info)) => json(serde_json::to_string(info)),
        Ok(VmmData::Version(v)) => json(Ok(
            serde_json::json!({ "firecracker_version": v }).to_string()
        )),
        Ok(VmmData::MachineConfig(c)) => json(serde_json::to_string(c)),
        Ok(VmmData::Balloon(b)) => json(serde_json::to_string(b)),
        Ok(VmmData::BalloonStats(s)) => json(serde_json::to_string(s)),
        Ok(VmmData::BalloonHintingStatus(s)) => json(serde_json::to_string(s)),
        Ok(VmmData::FullVmConfig(c)) => json(serde_json::to_string(c)),
        Ok(VmmData::Mmds(v)) => json(serde_json::to_string(v)),
        Err(e) => fault(e),
    }
}

fn fault(e: &ActionError) -> Response {
    Response::fault(e.status(), &e.to_string())
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
