//! The channel registry and process control, as seen from any process.
//!
//! The registry lives in the hub. Which end a lookup returns:
//!
//! - the process that created a channel holds end `A`; [`Node::get_channel`] in that
//!   process returns end `A` again;
//! - every other process gets end `B`.
//!
//! A child is the creator of its own `NAME-active` and `NAME-passive` channels, so the
//! main process (and any other child) gets end `B` and talks to the child, while the child
//! itself gets end `A` from [`Context::active_channel`](crate::Context::active_channel) and
//! [`Context::passive_channel`](crate::Context::passive_channel). Several processes may
//! hold the same end: what is sent to it goes to exactly one of its receiving processes.

use serde::de::DeserializeOwned;
use serde::Serialize;
use yukicomm_wire::{
    ChannelInfo, ChannelName, ControlAction, End, EndRef, ErrorCode, Reply, Request,
};

use crate::channel::Channel;
use crate::error::{ControlError, RegistryError};
use crate::node::Node;

fn refused(reply: Reply) -> RegistryError {
    match reply {
        Reply::Error { code, message } => RegistryError::Refused { code, message },
        other => RegistryError::Refused {
            code: ErrorCode::BadRequest,
            message: format!("unexpected reply {other:?}"),
        },
    }
}

fn valid(name: &str) -> Result<ChannelName, RegistryError> {
    ChannelName::new(name).map_err(|e| RegistryError::InvalidName {
        name: e.name,
        reason: e.reason,
    })
}

impl Node {
    /// Creates a new unnamed channel; this process holds its end `A`. Give it a name with
    /// [`set_channel`](Node::set_channel), or send it inside a message.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Link`] if the hub cannot be reached.
    pub fn channel<T: Serialize + DeserializeOwned>(&self) -> Result<Channel<T>, RegistryError> {
        let reply = self
            .transport()?
            .request(create::<T>(false), self.inner.request_timeout)?;
        self.created(reply)
    }

    /// Async form of [`channel`](Node::channel).
    ///
    /// # Errors
    ///
    /// As [`channel`](Node::channel).
    ///
    /// # Cancel safety
    ///
    /// If cancelled, the hub may still create the channel; it is freed when the reply
    /// is discarded.
    pub async fn channel_async<T: Serialize + DeserializeOwned>(
        &self,
    ) -> Result<Channel<T>, RegistryError> {
        let reply = self
            .transport()?
            .request_async(create::<T>(false), self.inner.request_timeout)
            .await?;
        self.created(reply)
    }

    fn created<T>(&self, reply: Reply) -> Result<Channel<T>, RegistryError> {
        match reply {
            Reply::Created { chan } => Ok(Channel::from_guard(self.acquire(
                EndRef { chan, end: End::A },
                true,
                None,
            ))),
            other => Err(refused(other)),
        }
    }

    /// Creates a new unnamed channel and returns handles on both its ends: `(A, B)`.
    /// Keep one and send the other inside a message, so that the receiving process can
    /// answer on it (a reply channel).
    ///
    /// # Errors
    ///
    /// [`RegistryError::Link`] if the hub cannot be reached.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo(ctx: &yukicomm_client::Context, requests: &yukicomm_client::Channel<(u32, yukicomm_client::Channel<u32>)>) -> yukicomm_client::Result<()> {
    /// let (mine, theirs) = ctx.channel_pair::<u32>()?;
    /// requests.send((21, theirs))?;
    /// let answer = mine.recv_timeout(std::time::Duration::from_secs(5))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn channel_pair<T: Serialize + DeserializeOwned>(
        &self,
    ) -> Result<(Channel<T>, Channel<T>), RegistryError> {
        let reply = self
            .transport()?
            .request(create::<T>(true), self.inner.request_timeout)?;
        match reply {
            Reply::Created { chan } => Ok((
                Channel::from_guard(self.acquire(EndRef { chan, end: End::A }, true, None)),
                Channel::from_guard(self.acquire(EndRef { chan, end: End::B }, true, None)),
            )),
            other => Err(refused(other)),
        }
    }

    /// Registers `channel` under `name`, so that any process can find it with
    /// [`get_channel`](Node::get_channel).
    ///
    /// # Errors
    ///
    /// [`RegistryError::InvalidName`], [`RegistryError::NameTaken`], or
    /// [`RegistryError::Link`].
    pub fn set_channel<T>(&self, name: &str, channel: &Channel<T>) -> Result<(), RegistryError> {
        let name = valid(name)?;
        let reply = self.transport()?.request(
            Request::Register {
                name: name.to_string(),
                chan: channel.id(),
            },
            self.inner.request_timeout,
        )?;
        match reply {
            Reply::Done => {
                channel.guard.state.set_label(name.as_str());
                Ok(())
            }
            Reply::Error {
                code: ErrorCode::NameTaken,
                ..
            } => Err(RegistryError::NameTaken {
                name: name.to_string(),
            }),
            other => Err(refused(other)),
        }
    }

    /// Finds the channel registered under `name` and returns a handle on the end this
    /// process gets (see the [module documentation](crate::registry)).
    ///
    /// # Errors
    ///
    /// [`RegistryError::InvalidName`], [`RegistryError::Unknown`],
    /// [`RegistryError::TypeMismatch`] when the channel carries another type than `T`,
    /// or [`RegistryError::Link`].
    pub fn get_channel<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Channel<T>, RegistryError> {
        let name = valid(name)?;
        let reply = self
            .transport()?
            .request(lookup::<T>(&name), self.inner.request_timeout)?;
        self.found(&name, reply)
    }

    /// Async form of [`get_channel`](Node::get_channel).
    ///
    /// # Errors
    ///
    /// As [`get_channel`](Node::get_channel).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn get_channel_async<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Channel<T>, RegistryError> {
        let name = valid(name)?;
        let reply = self
            .transport()?
            .request_async(lookup::<T>(&name), self.inner.request_timeout)
            .await?;
        self.found(&name, reply)
    }

    fn found<T>(&self, name: &ChannelName, reply: Reply) -> Result<Channel<T>, RegistryError> {
        match reply {
            Reply::Found {
                chan,
                end,
                peer_gone,
                peer_queued,
                type_name,
            } => {
                let guard = self.acquire(EndRef { chan, end }, true, Some(name.as_str()));
                let expected = std::any::type_name::<T>();
                if type_name != expected {
                    return Err(RegistryError::TypeMismatch {
                        name: name.to_string(),
                        expected: expected.to_string(),
                        found: type_name,
                    });
                }
                if peer_gone {
                    let state = &guard.state;
                    state
                        .peer_queued
                        .store(peer_queued, std::sync::atomic::Ordering::Release);
                    state
                        .peer_gone
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                Ok(Channel::from_guard(guard))
            }
            Reply::Error {
                code: ErrorCode::UnknownChannel,
                ..
            } => Err(RegistryError::Unknown {
                name: name.to_string(),
            }),
            other => Err(refused(other)),
        }
    }

    /// Lists every named channel.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Link`] if the hub cannot be reached.
    pub fn get_channels(&self) -> Result<Vec<ChannelInfo>, RegistryError> {
        match self
            .transport()?
            .request(Request::List, self.inner.request_timeout)?
        {
            Reply::Channels { channels } => Ok(channels),
            other => Err(refused(other)),
        }
    }

    /// Restarts the child process `name`: stop (terminate, wait, kill), then start again.
    /// Returns once the supervisor has accepted the request.
    ///
    /// # Errors
    ///
    /// [`ControlError::UnknownProcess`], or [`ControlError::Link`].
    pub fn restart_process(&self, name: &str) -> Result<(), ControlError> {
        self.control(ControlAction::Restart, Some(name))
    }

    /// Stops the child process `name` and does not start it again.
    ///
    /// # Errors
    ///
    /// [`ControlError::UnknownProcess`], or [`ControlError::Link`].
    pub fn stop_process(&self, name: &str) -> Result<(), ControlError> {
        self.control(ControlAction::Stop, Some(name))
    }

    pub(crate) fn control(
        &self,
        action: ControlAction,
        target: Option<&str>,
    ) -> Result<(), ControlError> {
        let reply = self.transport()?.request(
            Request::Control {
                action,
                target: target.map(str::to_string),
            },
            self.inner.request_timeout,
        )?;
        match reply {
            Reply::Done => Ok(()),
            Reply::Error {
                code: ErrorCode::UnknownProcess,
                ..
            } => Err(ControlError::UnknownProcess {
                name: target.unwrap_or_default().to_string(),
            }),
            Reply::Error { code, message } => Err(ControlError::Refused { code, message }),
            other => Err(ControlError::Refused {
                code: ErrorCode::BadRequest,
                message: format!("unexpected reply {other:?}"),
            }),
        }
    }
}

fn create<T>(pair: bool) -> Request {
    Request::Create {
        type_name: std::any::type_name::<T>().to_string(),
        pair,
    }
}

fn lookup<T>(name: &ChannelName) -> Request {
    Request::Lookup {
        name: name.to_string(),
        type_name: std::any::type_name::<T>().to_string(),
    }
}
