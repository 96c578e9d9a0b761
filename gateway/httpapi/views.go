package httpapi

import (
	"telematics/gateway/keys"
	"telematics/pkg/api"
)

// The key registry's answers are its own types; what the API sends is package api's. These
// conversions are the one place the two meet: a field the registry adds reaches the wire only
// when added here and to package api (the round-trip test decodes every answer strictly).

func keyStatusView(s keys.Status) api.KeyStatus {
	return api.KeyStatus{VIN: s.VIN, Version: s.Version, AckedVersion: s.AckedVersion, AckedMs: s.AckedMs,
		InSync: s.InSync, Keys: s.Keys}
}

func shareView(s keys.Share) api.Share {
	return api.Share{VIN: s.VIN, User: s.User, Role: s.Role, NotAfterMs: s.NotAfterMs, Channels: s.Channels,
		By: s.By, CreatedMs: s.CreatedMs}
}

func revocationView(r keys.Revocation) api.Revocation {
	return api.Revocation{VIN: r.VIN, KeyID: r.KeyID, User: r.User, Version: r.Version, ShareEnded: r.ShareEnded}
}

func roleChangeView(r keys.RoleChange) api.RoleChange {
	return api.RoleChange{VIN: r.VIN, User: r.User, Role: r.Role, KeysChanged: r.KeysChanged, Version: r.Version}
}

func transferView(t keys.Transfer) api.Transfer {
	return api.Transfer{VIN: t.VIN, Owner: t.Owner, UsersRemoved: t.UsersRemoved, KeysRemoved: t.KeysRemoved, Version: t.Version}
}

func decommissionView(d keys.Decommission) api.Decommission {
	return api.Decommission{VIN: d.VIN, UsersRemoved: d.UsersRemoved, KeysRemoved: d.KeysRemoved, Version: d.Version,
		CredentialsRetired: d.CredentialsRetired}
}
