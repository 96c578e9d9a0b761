package vehicle

import (
	"errors"

	"telematics/pkg/protocol"
	"telematics/pkg/vehicle/carstore"
	"telematics/pkg/whitelist"
)

// HandleWhitelist handles one message from v/{vin}/keys: a whitelist signed by the gateway.
// It returns the acknowledgement to publish on v/{vin}/keys/ack, or a refusal (nil ack):
//
//   - bad_request: not a signed envelope, or a malformed whitelist;
//   - signature_invalid: not signed by a gateway key the car trusts;
//   - forbidden: the whitelist is for another car;
//   - duplicate: its version is lower than the stored one (a replay or a rollback).
//
// A whitelist newer than the stored one is stored durably (whitelist, version and trust set in
// one transaction) before it is acknowledged and used. The version already stored, typically
// the retained message redelivered after a reconnect, is acknowledged again, so that a gateway
// that missed the first acknowledgement converges, but not stored again.
//
// When an accepted whitelist carries a trust list, the car trusts exactly those gateway keys
// from then on, for whitelists and grants: this is how a gateway signing-key rotation reaches
// cars without re-provisioning them. The whitelist that announces the new key must itself be
// signed by a key the car already trusts.
func (c *Car) HandleWhitelist(payload []byte) (*protocol.KeysAck, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	nowMs := c.clock.Now().UnixMilli()
	var env protocol.Envelope
	err := protocol.Decode(payload, &env)
	var wl *protocol.Whitelist
	if err == nil {
		wl, err = c.verifyWhitelist(env)
	}
	if err != nil {
		reason := protocol.ReasonOf(err)
		if reason == protocol.ReasonInternal {
			c.log.Error("whitelist not stored", "reason", reason, "err", err)
		} else {
			c.log.Warn("whitelist refused", "reason", reason, "err", err)
		}
		return nil, err
	}
	ack := &protocol.KeysAck{V: protocol.Version, VIN: c.vin, Version: wl.Version, TsMs: nowMs}
	if wl.Version == c.wlVersion {
		c.log.Debug("whitelist redelivered, acknowledged again", "version", wl.Version)
		return ack, nil
	}
	var trusted = c.trusted
	if len(wl.Trust) > 0 {
		// whitelist.Verify checked that every entry is a P-256 key.
		if trusted, err = decodeTrust(wl.Trust); err != nil {
			return nil, protocol.Refuse(protocol.ReasonBadRequest, "whitelist trust list: %v", err)
		}
	}
	if err := c.store.SaveKeys(c.vin, carstore.KeyRecord{Envelope: env, Version: wl.Version, Trust: wl.Trust}); err != nil {
		if errors.Is(err, carstore.ErrStaleWhitelist) {
			// Another writer stored a newer one under our feet; the car state is stale too.
			return nil, &protocol.Refusal{Reason: protocol.ReasonDuplicate, Err: err}
		}
		c.log.Error("whitelist not stored", "version", wl.Version, "err", err)
		return nil, err
	}
	c.wl, c.wlVersion, c.trusted = wl, wl.Version, trusted
	c.keys.Store(wl)
	c.log.Info("whitelist stored", "version", wl.Version, "keys", len(wl.Keys), "trust_keys", len(trusted), "trust_changed", len(wl.Trust) > 0)
	return ack, nil
}

// verifyWhitelist verifies a whitelist envelope against the car's trusted keys and stored
// version. A whitelist of the stored version passes (it is acknowledged, not stored).
func (c *Car) verifyWhitelist(env protocol.Envelope) (*protocol.Whitelist, error) {
	// whitelist.Verify accepts only versions above the one it is given: one below the stored
	// version lets the stored version itself through, to be acknowledged again.
	floor := c.wlVersion
	if floor > 0 {
		floor--
	}
	wl, err := whitelist.Verify(env, c.vin, floor, c.trusted)
	if err != nil {
		if protocol.ReasonOf(err) == protocol.ReasonDuplicate {
			return nil, protocol.Refuse(protocol.ReasonDuplicate, "whitelist is older than the stored version %d", c.wlVersion)
		}
		return nil, err
	}
	return wl, nil
}

// WhitelistVersion is the version of the car's whitelist; 0 when it has none.
func (c *Car) WhitelistVersion() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.wlVersion
}
