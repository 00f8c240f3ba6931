// The app's evaluation result views as the Tasks page opens them: ViewEvalResultsModal for one job,
// CompareEvalResultsModal for the jobs selected together.
import * as React from 'react';
import { createRoot } from 'react-dom/client';
import { CssVarsProvider } from '@mui/joy/styles';
import ViewEvalResultsModal from 'app/ViewEvalResultsModal.tsx';
import CompareEvalResultsModal from 'app/CompareEvalResultsModal.tsx';

window.renderView = (jobId) =>
  createRoot(document.getElementById('root')).render(
    <CssVarsProvider>
      <ViewEvalResultsModal open onClose={() => {}} jobId={jobId} />
    </CssVarsProvider>,
  );

window.renderCompare = (jobIds) =>
  createRoot(document.getElementById('root')).render(
    <CssVarsProvider>
      <CompareEvalResultsModal open onClose={() => {}} jobIds={jobIds} />
    </CssVarsProvider>,
  );
