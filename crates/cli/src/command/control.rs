//! `yukicomm restart NAME` and `yukicomm stop NAME`: ask the main process, which acts
//! through its supervisor (as `MainContext::restart_process` would).

use std::process::ExitCode;

use yukicomm_wire::{ControlAction, Request};

use super::print;
use crate::connect::{Error, Observer};

pub fn run(observer: &mut Observer, name: &str, restart: bool) -> Result<ExitCode, Error> {
    let action = if restart {
        ControlAction::Restart
    } else {
        ControlAction::Stop
    };
    observer.request(Request::Control {
        action,
        target: Some(name.to_string()),
    })?;
    let verb = if restart { "restart" } else { "stop" };
    print(&format!("asked the main process to {verb} '{name}'\n"))?;
    Ok(ExitCode::SUCCESS)
}
