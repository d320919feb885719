//go:build race

package rawio

// sync.Pool drops items at random under the race detector.
const raceEnabled = true
