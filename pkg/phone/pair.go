package phone

import (
	"context"
	"fmt"

	"telematics/pkg/api"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// PairKey registers the public half of key as a digital key of car vin for the session's
// user, with the role the user holds on the car (its owner, or someone the owner shared it
// with). Only the public key (base64url DER) travels; the gateway derives the key id from it,
// and PairKey checks that it did so correctly. The key change carries a TOTP code where the
// gateway's policy asks for one; refusals are *api.Error.
func PairKey(ctx context.Context, s *Session, key *sign.Signer, vin, label, totp string) (protocol.WhitelistKey, error) {
	if key == nil {
		return protocol.WhitelistKey{}, ErrNoKey
	}
	pub, err := sign.EncodePublic(key.Public())
	if err != nil {
		return protocol.WhitelistKey{}, fmt.Errorf("encode public key: %w", err)
	}
	k, err := s.Client().PairKey(ctx, api.PairRequest{VIN: vin, PublicKey: pub, Label: label, TOTP: totp})
	if err != nil {
		return k, err
	}
	if k.ID != key.KID() {
		return k, fmt.Errorf("the gateway registered key %q, not this phone's key %q", k.ID, key.KID())
	}
	return k, nil
}
