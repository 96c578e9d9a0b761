package whitelist

import (
	"crypto/ecdsa"
	"encoding/json"
	"testing"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// FuzzVerifyCommand feeds arbitrary envelopes (what an app or a phone on the local link can
// send) to the rule both the gateway and the car apply: it must refuse with a reason from the
// closed list, never panic, and accept only a command signed by the whitelisted key.
func FuzzVerifyCommand(f *testing.F) {
	key, _ := sign.Generate()
	pub, _ := sign.EncodePublic(key.Public())
	wl := &protocol.Whitelist{V: 1, VIN: "1HGCM82633A004352", Version: 1, Keys: []protocol.WhitelistKey{{
		ID: key.KID(), Pub: pub, User: "alice", Role: protocol.RoleOwner, Channels: []string{"cloud", "local"}}}}
	now := time.UnixMilli(1_800_000_000_000)
	cmd := protocol.Command{V: 1, ID: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", VIN: wl.VIN, Action: "unlock", KeyID: key.KID(),
		User: "alice", IssuedAtMs: now.UnixMilli(), ExpiresAtMs: now.UnixMilli() + 10_000}
	doc, _ := json.Marshal(cmd)
	good, _ := key.Sign(doc)
	f.Add(good.Doc, good.Sig, good.KID)
	f.Add(good.Doc, "", good.KID)
	f.Add("e30", good.Sig, good.KID)
	f.Add("%%%", "x", "y")
	f.Fuzz(func(t *testing.T, d, s, k string) {
		env := protocol.Envelope{Doc: d, Sig: s, KID: k}
		_, _, err := VerifyCommand(wl, env, protocol.ChannelCloud, now)
		if err != nil {
			if r := protocol.ReasonOf(err); !r.Valid() || r == protocol.ReasonInternal {
				t.Fatalf("refusal without a protocol reason: %v", err)
			}
			return
		}
		// Accepted: it must be exactly a document the key signed.
		b, derr := env.DocBytes()
		sig, serr := protocol.DecodeB64(s)
		if derr != nil || serr != nil || !sign.VerifyRaw(key.Public(), b, sig) {
			t.Fatalf("accepted an envelope the whitelisted key did not sign")
		}
	})
}

// FuzzVerifyWhitelist: arbitrary whitelist envelopes never panic and are accepted only when
// the gateway signed them.
func FuzzVerifyWhitelist(f *testing.F) {
	gw, _ := sign.Generate()
	env, _ := Sign(gw, protocol.Whitelist{VIN: "1HGCM82633A004352", Version: 2})
	f.Add(env.Doc, env.Sig)
	f.Add("e30", env.Sig)
	f.Fuzz(func(t *testing.T, d, s string) {
		_, err := Verify(protocol.Envelope{Doc: d, Sig: s}, "1HGCM82633A004352", 1, []*ecdsa.PublicKey{gw.Public()})
		if err != nil {
			if r := protocol.ReasonOf(err); !r.Valid() || r == protocol.ReasonInternal {
				t.Fatalf("refusal without a protocol reason: %v", err)
			}
			return
		}
		b, _ := protocol.DecodeB64(d)
		sig, _ := protocol.DecodeB64(s)
		if !sign.VerifyRaw(gw.Public(), b, sig) {
			t.Fatal("accepted a whitelist the gateway did not sign")
		}
	})
}
