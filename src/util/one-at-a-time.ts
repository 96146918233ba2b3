/**
 * Runs async jobs one after another: a job starts when the one before it has settled, so
 * a caller that awaits its job knows every earlier one is done too (state files written by
 * a timer and once more on stop, and the rollouts' files written after each change).
 */
export class OneAtATime {
  private last: Promise<void> = Promise.resolve();

  run(job: () => Promise<void>): Promise<void> {
    const next = this.last.then(job);
    this.last = next.catch(() => undefined);
    return next;
  }
}
