package vehicle

import (
	"fmt"
	"testing"

	"telematics/pkg/protocol"
	"telematics/pkg/whitelist"
)

// BenchmarkVerifyCommand measures what a car does for every command before it executes it:
// whitelist.VerifyCommand against whitelists of several sizes (the signing key last, so Find
// walks the whole list), and the car's whole cloud-path verification (grant signature, binding,
// expiry, phone signature and whitelist, replay lookup) with ~10 keys.
func BenchmarkVerifyCommand(b *testing.B) {
	gw := newTestGateway(b)
	owner := gw.cast.owner
	for _, n := range []int{1, 10, 100} {
		keys := make([]protocol.WhitelistKey, 0, n)
		for i := 0; i < n-1; i++ {
			keys = append(keys, newTestPhone(b, fmt.Sprintf("user%d", i), protocol.RoleDriver, protocol.ChannelCloud, protocol.ChannelLocal).key)
		}
		keys = append(keys, owner.key)
		wl := &protocol.Whitelist{V: protocol.Version, VIN: testVIN, Version: 1, Keys: keys}
		cmd := newCmd(testVIN, protocol.ActionUnlock, t0)
		cmd.Nonce = fuzzNonce
		env := owner.sign(b, cmd)
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(env.Doc)))
			for b.Loop() {
				if _, _, err := whitelist.VerifyCommand(wl, env, protocol.ChannelLocal, t0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}

	b.Run("car_cloud_path/keys=10", func(b *testing.B) {
		st := openTestStore(b, b.TempDir())
		car := newTestCar(b, st, gw.creds(b, testVIN), newClock(t0))
		keys := gw.cast.keys()
		for len(keys) < 10 {
			keys = append(keys, newTestPhone(b, fmt.Sprintf("user%d", len(keys)), protocol.RoleDriver, protocol.ChannelCloud).key)
		}
		install(b, car, gw.whitelist(b, wlSpec{keys: keys}))
		payload := gw.build(b, cmdSpec{cmd: newCmd(testVIN, protocol.ActionUnlock, t0)})
		b.ReportAllocs()
		b.SetBytes(int64(len(payload)))
		for b.Loop() {
			car.mu.Lock()
			_, err := car.verify(payload, t0)
			car.mu.Unlock()
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}
