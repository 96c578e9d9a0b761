package vehicle

import (
	"math"

	"telematics/pkg/protocol"
)

// VSSTraveledDistance is the odometer (km).
const VSSTraveledDistance = protocol.VSSTraveledDistance

// State is what a car knows about itself. It is persisted in the store after every executed
// command and periodically while the car drives, so a restarted car resumes where it was.
type State struct {
	Locked     bool    `json:"locked"`
	TrunkOpen  bool    `json:"trunk_open"`
	Climate    bool    `json:"climate"`
	Charging   bool    `json:"charging"`
	Running    bool    `json:"running"`
	SoCPercent float64 `json:"soc"`
	Lat        float64 `json:"lat"`
	Lon        float64 `json:"lon"`
	SpeedKmh   float64 `json:"speed_kmh"`
	OdometerKm float64 `json:"odometer_km"`

	// The motion model's own state (see motion.go).
	HeadingDeg         float64 `json:"heading_deg"`
	Driving            bool    `json:"driving"`
	TargetSpeedKmh     float64 `json:"target_speed_kmh"`
	PhaseUntilMs       int64   `json:"phase_until_ms"`
	RemoteStartUntilMs int64   `json:"remote_start_until_ms,omitempty"`
	PlugInOnPark       bool    `json:"plug_in_on_park,omitempty"` // charge_start while driving
	HomeLat            float64 `json:"home_lat"`
	HomeLon            float64 `json:"home_lon"`
}

// Signals returns the state keyed by COVESA VSS paths, rounded to what a real car reports.
// The position is included only when withPosition is set: command results other than locate
// do not reveal where the car is.
func (s State) Signals(withPosition bool) map[string]any {
	m := map[string]any{
		protocol.VSSSpeed:     round(s.SpeedKmh, 1),
		protocol.VSSSoC:       round(s.SoCPercent, 1),
		protocol.VSSIsLocked:  s.Locked,
		protocol.VSSCharging:  s.Charging,
		protocol.VSSClimate:   s.Climate,
		protocol.VSSTrunkOpen: s.TrunkOpen,
		protocol.VSSRunning:   s.Running,
		VSSTraveledDistance:   round(s.OdometerKm, 1),
	}
	if withPosition {
		m[protocol.VSSLatitude] = round(s.Lat, 6)
		m[protocol.VSSLongitude] = round(s.Lon, 6)
	}
	return m
}

func round(x float64, digits int) float64 {
	p := math.Pow10(digits)
	return math.Round(x*p) / p
}
