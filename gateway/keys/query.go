package keys

import "telematics/pkg/protocol"

// Status is what an owner and the admin API see of a car's whitelist.
type Status struct {
	VIN          string
	Version      uint64
	AckedVersion uint64
	AckedMs      int64
	InSync       bool
	Keys         []protocol.WhitelistKey
}

// Whitelist returns a car's current whitelist (nil if it has none).
func (s *Service) Whitelist(vin string) *protocol.Whitelist {
	s.refresh(vin)
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cache[vin]
}

// OutOfSync is how many cars have not yet acknowledged their current whitelist (a key change,
// a revocation included, that has not reached the car).
func (s *Service) OutOfSync() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, r := range s.recs {
		if r.AckedVersion < r.Version && !r.Retired {
			n++
		}
	}
	return n
}

// Status reports a car's whitelist version, what the car acknowledged, and its keys.
func (s *Service) Status(vin string) Status {
	s.refresh(vin)
	s.mu.RLock()
	defer s.mu.RUnlock()
	r := s.recs[vin]
	st := Status{VIN: vin, Version: r.Version, AckedVersion: r.AckedVersion, AckedMs: r.AckedMs, InSync: r.Version == r.AckedVersion}
	if wl := s.cache[vin]; wl != nil {
		st.Keys = append(st.Keys, wl.Keys...)
	}
	return st
}

// List is what user may see of vin's keys: everything for an owner, their own keys otherwise.
func (s *Service) List(user, vin string) (Status, error) {
	v, err := s.vehicle(vin)
	if err != nil {
		return Status{}, err
	}
	role, ok := v.Users[user]
	if !ok {
		return Status{}, protocol.Refuse(protocol.ReasonForbidden, "you hold no role on %s", vin)
	}
	st := s.Status(vin)
	if role != protocol.RoleOwner {
		own := st.Keys[:0:0]
		for _, k := range st.Keys {
			if k.User == user {
				own = append(own, k)
			}
		}
		st.Keys = own
	}
	return st, nil
}

// ListAll is List for every car the user holds a role on, in VIN order.
func (s *Service) ListAll(user string) ([]Status, error) {
	vs, err := s.st.ListVehicles()
	if err != nil {
		return nil, err
	}
	out := []Status{}
	for _, v := range vs {
		if _, ok := v.Users[user]; !ok {
			continue
		}
		st, err := s.List(user, v.VIN)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}
