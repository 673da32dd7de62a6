//! The alarms a member reports through Maintenance.Alarm and Status.
//!
//! Where they live: in this member's memory only, not replicated and not persisted. In etcd an
//! alarm is raised through Raft (a member that runs out of quota, or a corruption check) and
//! every member then refuses writes. raftkv has no quota and no corruption check yet, so
//! nothing raises an alarm by itself; ACTIVATE and DEACTIVATE exist so tools that manage
//! alarms work and see etcd's answers. Making alarms cluster-wide needs a write request and a
//! state-machine table for them (the next step once a quota exists); until then an alarm
//! activated on one member is listed by that member only, is lost on restart, and refuses
//! no writes.

use std::collections::BTreeSet;

use kv_api::etcdserverpb::{AlarmMember, AlarmType};
use std::sync::{Mutex, MutexGuard};

/// The active alarms, ordered by (member, type) so lists are stable.
#[derive(Debug, Default)]
pub struct Alarms {
    active: Mutex<BTreeSet<(u64, i32)>>,
}

fn member((member_id, alarm): (u64, i32)) -> AlarmMember {
    AlarmMember { member_id, alarm }
}

impl Alarms {
    /// The set; a panic elsewhere while it was held leaves it consistent (every change is one
    /// insert or remove), so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, BTreeSet<(u64, i32)>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The active alarms of type `alarm` (NONE = every type), as etcd's GET.
    pub fn get(&self, alarm: AlarmType) -> Vec<AlarmMember> {
        self.lock().iter().filter(|(_, a)| alarm == AlarmType::None || *a == alarm as i32).map(|&m| member(m)).collect()
    }

    /// Raises `alarm` for `member_id`; returns it if it was not active already. NONE raises
    /// nothing, as in etcd.
    pub fn activate(&self, member_id: u64, alarm: AlarmType) -> Option<AlarmMember> {
        if alarm == AlarmType::None {
            return None;
        }
        let key = (member_id, alarm as i32);
        self.lock().insert(key).then(|| member(key))
    }

    /// Clears `alarm` for `member_id`; returns it if it was active.
    pub fn deactivate(&self, member_id: u64, alarm: AlarmType) -> Option<AlarmMember> {
        let key = (member_id, alarm as i32);
        self.lock().remove(&key).then(|| member(key))
    }

    /// etcd's Status `errors` entry for each active alarm.
    pub fn descriptions(&self) -> Vec<String> {
        self.lock()
            .iter()
            .map(|&(m, a)| {
                let name = AlarmType::try_from(a).map_or("UNKNOWN", |t| t.as_str_name());
                format!("memberID:{m} alarm:{name} ")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activate_get_deactivate_as_etcd() {
        let a = Alarms::default();
        assert!(a.get(AlarmType::None).is_empty());
        assert_eq!(a.activate(7, AlarmType::None), None, "NONE raises nothing");
        let nospace = AlarmMember { member_id: 7, alarm: AlarmType::Nospace as i32 };
        assert_eq!(a.activate(7, AlarmType::Nospace), Some(nospace));
        assert_eq!(a.activate(7, AlarmType::Nospace), None, "already active: nothing changed");
        a.activate(3, AlarmType::Corrupt);
        assert_eq!(a.get(AlarmType::None).len(), 2);
        assert_eq!(a.get(AlarmType::Nospace), vec![nospace]);
        assert_eq!(a.descriptions(), ["memberID:3 alarm:CORRUPT ", "memberID:7 alarm:NOSPACE "]);
        assert_eq!(a.deactivate(7, AlarmType::Nospace), Some(nospace));
        assert_eq!(a.deactivate(7, AlarmType::Nospace), None);
        assert_eq!(a.get(AlarmType::None).len(), 1);
    }
}
