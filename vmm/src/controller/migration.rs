//! The migration rules: `migration/send` needs a running microVM and no migration going on;
//! `migration/receive` needs a fresh process, as `snapshot/load` does; while a migration goes
//! on, only reads, logger and metrics requests and `migration/cancel` are served, so nothing
//! changes the guest under it. A destination's guest arrives through `adopt`.

use super::{BEFORE_START, Backend, Controller};
use crate::api::migration::{ReceiveParams, SendParams};
use crate::api::router::ApiRequest;
use crate::config::VmConfig;

/// The answer of `GET /migration` before any migration.
pub const NO_MIGRATION: &str = "no migration has started on this instance";

impl<B: Backend> Controller<B> {
    /// Whether a migration is going on.
    pub fn migrating(&self) -> bool {
        self.backend
            .migration()
            .is_some_and(|m| m.state.is_active())
    }

    /// Why `req` is refused while a migration goes on, if it is.
    pub(super) fn refused_while_migrating(&self, req: &ApiRequest) -> Option<String> {
        let allowed = matches!(
            req,
            ApiRequest::GetInstanceInfo
                | ApiRequest::GetVersion
                | ApiRequest::GetMachineConfig
                | ApiRequest::GetVmConfig
                | ApiRequest::GetMigration
                | ApiRequest::PutMigrationCancel
                | ApiRequest::PutLogger(_)
                | ApiRequest::PutMetrics(_)
        ) || matches!(req, ApiRequest::PutAction(a) if a.action_type == crate::api::model::ActionType::FlushMetrics);
        if allowed {
            return None;
        }
        let info = self.backend.migration()?;
        if info.role == crate::api::migration::Role::Source && info.committed {
            return Some(format!(
                "the guest has migrated to {}: this instance no longer runs it",
                info.peer
            ));
        }
        info.state.is_active().then(|| {
            format!(
                "a migration is in progress ({}, {}): only GET requests, logger and metrics requests and PUT /migration/cancel are served until it ends",
                info.state.name(),
                info.peer
            )
        })
    }

    pub(super) fn migrate_send(&mut self, p: &SendParams) -> Result<(), String> {
        let req = p.settle()?;
        let Some(vm) = self.vm.as_ref() else {
            return Err(BEFORE_START.into());
        };
        if self.paused {
            return Err(
                "the microVM is paused: resume it before migrating it (PATCH /vm {\"state\": \"Resumed\"})"
                    .into(),
            );
        }
        let cfg = self.vm_config()?;
        self.backend.migrate_send(vm, &cfg, req)
    }

    pub(super) fn migrate_receive(&mut self, p: &ReceiveParams) -> Result<(), String> {
        let req = p.settle()?;
        if self.configured_anything() {
            return Err(
                "a migration is received only by a fresh microVM: nothing but the logger and metrics may be configured before migration/receive"
                    .into(),
            );
        }
        if self.backend.migration().is_some() {
            return Err("this instance has already received (or tried to receive) a guest".into());
        }
        self.backend.migrate_receive(&self.base, req)
    }

    /// Takes in the guest an incoming migration brought, running, built from `cfg`.
    pub fn adopt(&mut self, vm: B::Vm, cfg: VmConfig) {
        self.install(vm, cfg, false);
    }

    /// The backend, for the VMM loop's own calls.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }
}
