// k6 provides `console`; without the DOM library (which k6 does not have) TypeScript
// does not know it, and @types/k6 does not declare it.
declare var console: {
    log(...data: unknown[]): void;
    info(...data: unknown[]): void;
    warn(...data: unknown[]): void;
    error(...data: unknown[]): void;
    debug(...data: unknown[]): void;
};
