// Package whitelist checks a phone-signed command against a car's digital-key whitelist: the
// one rule the car (on both paths) and the gateway (on the cloud path) apply, so they cannot
// drift apart. It also verifies signed whitelists.
package whitelist

import (
	"crypto/ecdsa"
	"encoding/json"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// VerifyCommand checks that env is a command signed by a key on wl that may, at now, be used
// on channel for the command's action, and returns the command and the key. Refusals, each a
// *protocol.Refusal: bad_request (not a command), key_unknown (kid not on the whitelist),
// signature_invalid, key_revoked, key_expired (before not_before or after not_after),
// forbidden (channel or role does not allow it).
func VerifyCommand(wl *protocol.Whitelist, env protocol.Envelope, channel string, now time.Time) (protocol.Command, protocol.WhitelistKey, error) {
	var cmd protocol.Command
	doc, err := env.DocBytes()
	if err != nil {
		return cmd, protocol.WhitelistKey{}, err
	}
	if err := protocol.Decode(doc, &cmd); err != nil {
		return cmd, protocol.WhitelistKey{}, err
	}
	if err := cmd.Check(); err != nil {
		return cmd, protocol.WhitelistKey{}, err
	}
	if env.KID == "" || env.Sig == "" {
		return cmd, protocol.WhitelistKey{}, protocol.Refuse(protocol.ReasonSignatureInvalid, "command is not signed by a phone key")
	}
	if wl == nil {
		return cmd, protocol.WhitelistKey{}, protocol.Refuse(protocol.ReasonKeyUnknown, "no whitelist")
	}
	k, ok := wl.Find(env.KID)
	if !ok {
		return cmd, k, protocol.Refuse(protocol.ReasonKeyUnknown, "key %q is not on the whitelist", env.KID)
	}
	if cmd.KeyID != "" && cmd.KeyID != env.KID {
		return cmd, k, protocol.Refuse(protocol.ReasonSignatureInvalid, "command names key %q but is signed by %q", cmd.KeyID, env.KID)
	}
	pub, err := sign.DecodePublic(k.Pub)
	if err != nil {
		return cmd, k, protocol.Refuse(protocol.ReasonKeyUnknown, "whitelist entry %q has an unusable public key", k.ID)
	}
	if _, err := sign.Verify(env, pub); err != nil {
		return cmd, k, err
	}
	if err := CheckKey(k, channel, cmd.Action, now); err != nil {
		return cmd, k, err
	}
	if cmd.User != "" && cmd.User != k.User {
		return cmd, k, protocol.Refuse(protocol.ReasonForbidden, "command names user %q, key belongs to %q", cmd.User, k.User)
	}
	return cmd, k, nil
}

// CheckKey applies a key's revocation, validity period, channels and role.
func CheckKey(k protocol.WhitelistKey, channel string, action protocol.Action, now time.Time) error {
	nowMs := now.UnixMilli()
	switch {
	case k.RevokedAtMs != 0:
		return protocol.Refuse(protocol.ReasonKeyRevoked, "key %q was revoked", k.ID)
	case k.NotBeforeMs != 0 && nowMs < k.NotBeforeMs:
		return protocol.Refuse(protocol.ReasonKeyExpired, "key %q is not valid before %s", k.ID, time.UnixMilli(k.NotBeforeMs).UTC().Format(time.RFC3339))
	case k.NotAfterMs != 0 && nowMs >= k.NotAfterMs:
		return protocol.Refuse(protocol.ReasonKeyExpired, "key %q expired at %s", k.ID, time.UnixMilli(k.NotAfterMs).UTC().Format(time.RFC3339))
	case !k.AllowsChannel(channel):
		return protocol.Refuse(protocol.ReasonForbidden, "key %q may not be used on the %s channel", k.ID, channel)
	case !k.Role.Allows(action):
		return protocol.Refuse(protocol.ReasonForbidden, "a %s key may not %s", k.Role, action)
	}
	return nil
}

// Verify checks a signed whitelist for car vin: signed by one of the trusted gateway keys,
// naming vin, and newer than storedVersion. Refusals: signature_invalid, forbidden (another
// car), duplicate (not newer: a replay or a rollback), bad_request (malformed).
func Verify(env protocol.Envelope, vin string, storedVersion uint64, trusted []*ecdsa.PublicKey) (*protocol.Whitelist, error) {
	doc, err := sign.VerifyAny(env, trusted)
	if err != nil {
		return nil, err
	}
	var wl protocol.Whitelist
	if err := protocol.Decode(doc, &wl); err != nil {
		return nil, err
	}
	if wl.V != protocol.Version {
		return nil, protocol.Refuse(protocol.ReasonBadRequest, "unsupported whitelist version field %d", wl.V)
	}
	if wl.VIN != vin {
		return nil, protocol.Refuse(protocol.ReasonForbidden, "whitelist is for %q, not this car", wl.VIN)
	}
	if wl.Version <= storedVersion {
		return nil, protocol.Refuse(protocol.ReasonDuplicate, "whitelist version %d is not newer than the stored %d", wl.Version, storedVersion)
	}
	for _, t := range wl.Trust {
		if _, err := sign.DecodePublic(t); err != nil {
			return nil, protocol.Refuse(protocol.ReasonBadRequest, "whitelist trust entry is not a P-256 key")
		}
	}
	return &wl, nil
}

// Sign builds the signed envelope of a whitelist.
func Sign(s *sign.Signer, wl protocol.Whitelist) (protocol.Envelope, error) {
	wl.V = protocol.Version
	b, err := json.Marshal(wl)
	if err != nil {
		return protocol.Envelope{}, err
	}
	return s.Sign(b)
}
